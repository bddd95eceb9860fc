/**
 * NVMe 1.4 controller registers, commands and data structures the driver
 * uses (NVM Express Base Specification 1.4, sections 3.1, 4, 5, 6).
 */

/** Controller registers (BAR0). */
export const REG = {
  CAP: 0x00, // 8 bytes
  INTMS: 0x0c,
  CC: 0x14,
  CSTS: 0x1c,
  AQA: 0x24,
  ASQ: 0x28, // 8 bytes
  ACQ: 0x30, // 8 bytes
  /** First doorbell; stride 4 << CAP.DSTRD. */
  DOORBELLS: 0x1000,
} as const;

export const CC = {
  EN: 1 << 0,
  /** I/O command set: NVM. */
  CSS_NVM: 0 << 4,
  /** Memory page size 2^(12 + MPS): 4 KiB. */
  MPS_4K: 0 << 7,
  /** Round robin arbitration. */
  AMS_RR: 0 << 11,
  SHN_NORMAL: 1 << 14,
  SHN_MASK: 3 << 14,
  /** I/O submission queue entry 2^6 = 64 bytes, completion 2^4 = 16 bytes. */
  IOSQES: 6 << 16,
  IOCQES: 4 << 20,
} as const;

export const CSTS = {
  RDY: 1 << 0,
  CFS: 1 << 1,
  SHST_MASK: 3 << 2,
  SHST_COMPLETE: 2 << 2,
} as const;

export const ADMIN = {
  CREATE_SQ: 0x01,
  CREATE_CQ: 0x05,
  IDENTIFY: 0x06,
  ABORT: 0x08,
  SET_FEATURES: 0x09,
} as const;

export const NVM = {
  FLUSH: 0x00,
  WRITE: 0x01,
  READ: 0x02,
  DSM: 0x09,
} as const;

export const CNS = {
  NAMESPACE: 0x00,
  CONTROLLER: 0x01,
  ACTIVE_NAMESPACES: 0x02,
} as const;

export const FEATURE = {
  NUMBER_OF_QUEUES: 0x07,
} as const;

/** Identify Controller ONCS bit: Dataset Management supported. */
export const ONCS_DSM = 1 << 2;

export const SQE_BYTES = 64;
export const CQE_BYTES = 16;
export const PAGE = 4096;
/** PRP entries in one PRP list page. */
export const PRPS_PER_PAGE = PAGE / 8;

/** Decoded CAP (the fields the driver uses), read as two 32-bit halves (no BigInt). */
export interface Capabilities {
  /** Maximum queue entries supported (MQES + 1). */
  readonly maxQueueEntries: number;
  /** Worst-case time for CSTS.RDY to change after CC.EN, in ms (CAP.TO × 500 ms). */
  readonly readyTimeoutMs: number;
  /** Doorbell stride in bytes (4 << DSTRD). */
  readonly doorbellStride: number;
  readonly nvmCommandSet: boolean;
  /** Minimum memory page size in bytes. */
  readonly minPageSize: number;
}

export function decodeCap(lo: number, hi: number): Capabilities {
  return {
    maxQueueEntries: (lo & 0xffff) + 1,
    readyTimeoutMs: ((lo >>> 24) & 0xff) * 500,
    doorbellStride: 4 << (hi & 0xf),
    nvmCommandSet: ((hi >>> 5) & 1) !== 0,
    minPageSize: 1 << (12 + ((hi >>> 16) & 0xf)),
  };
}

const ascii = (bytes: Uint8Array, from: number, to: number) => Buffer.from(bytes.subarray(from, to)).toString('latin1').replace(/[\s\0]+$/, '');
const u16 = (b: Uint8Array, at: number) => b[at]! | (b[at + 1]! << 8);
const u32 = (b: Uint8Array, at: number) => (u16(b, at) | (u16(b, at + 2) << 16)) >>> 0;
const u64 = (b: Uint8Array, at: number) => u32(b, at) + u32(b, at + 4) * 2 ** 32;

/** Identify Controller data (CNS 01h), the fields the driver uses. */
export interface ControllerIdentity {
  readonly serial: string;
  readonly model: string;
  readonly firmware: string;
  /** Maximum data transfer size in bytes (0: no limit). */
  readonly maxTransferBytes: number;
  readonly datasetManagement: boolean;
}

export function decodeIdentifyController(data: Uint8Array, minPageSize: number): ControllerIdentity {
  const mdts = data[77]!;
  return {
    serial: ascii(data, 4, 24),
    model: ascii(data, 24, 64),
    firmware: ascii(data, 64, 72),
    maxTransferBytes: mdts === 0 ? 0 : minPageSize * 2 ** mdts,
    datasetManagement: (u16(data, 520) & ONCS_DSM) !== 0,
  };
}

/** Identify Namespace data (CNS 00h), the fields the driver uses. */
export interface NamespaceIdentity {
  /** Size in logical blocks (NSZE). */
  readonly blocks: number;
  /** Bytes per logical block of the formatted LBA format. */
  readonly blockSize: number;
  /** Metadata bytes per block of the formatted format (the driver serves only 0). */
  readonly metadataSize: number;
}

export function decodeIdentifyNamespace(data: Uint8Array): NamespaceIdentity {
  const format = data[26]! & 0xf;
  const lbaf = 128 + 4 * format;
  return {
    blocks: u64(data, 0),
    blockSize: 2 ** data[lbaf + 2]!,
    metadataSize: u16(data, lbaf),
  };
}

/** Active namespace IDs (CNS 02h): u32s, ended by a 0. */
export function decodeNamespaceList(data: Uint8Array): number[] {
  const ids: number[] = [];
  for (let at = 0; at < data.length; at += 4) {
    const id = u32(data, at);
    if (id === 0) break;
    ids.push(id);
  }
  return ids;
}
