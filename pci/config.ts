/**
 * PCI configuration space: header fields, BAR decoding and capability lists.
 * Pure functions over a reader, so they are tested on synthetic images and
 * used on real devices alike.
 */
export type Width = 1 | 2 | 4;

export interface ConfigReader {
  read(width: Width, offset: number): number;
}

export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_CLASS_REVISION = 0x08;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BASE_ADDRESS_0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;

export const PCI_COMMAND_IO = 1 << 0;
export const PCI_COMMAND_MEMORY = 1 << 1;
export const PCI_COMMAND_MASTER = 1 << 2;
export const PCI_COMMAND_INTX_DISABLE = 1 << 10;
export const PCI_STATUS_INTERRUPT = 1 << 3;
export const PCI_STATUS_CAP_LIST = 1 << 4;

export const CONFIG_SPACE_SIZE = 256;
export const EXTENDED_CONFIG_SPACE_SIZE = 4096;

export interface ConfigHeader {
  readonly vendor: number;
  readonly device: number;
  readonly revision: number;
  /** 24-bit class code: base class, subclass, programming interface. */
  readonly classCode: number;
  readonly headerType: number;
  readonly multiFunction: boolean;
  readonly subsystemVendor: number;
  readonly subsystemDevice: number;
  readonly command: number;
  readonly status: number;
  /** 0 = none, 1-4 = INTA#-INTD#. */
  readonly interruptPin: number;
}

export function readHeader(cfg: ConfigReader): ConfigHeader {
  const classRevision = cfg.read(4, PCI_CLASS_REVISION);
  const headerType = cfg.read(1, PCI_HEADER_TYPE);
  const type0 = (headerType & 0x7f) === 0;
  return {
    vendor: cfg.read(2, PCI_VENDOR_ID),
    device: cfg.read(2, PCI_DEVICE_ID),
    revision: classRevision & 0xff,
    classCode: classRevision >>> 8,
    headerType: headerType & 0x7f,
    multiFunction: (headerType & 0x80) !== 0,
    subsystemVendor: type0 ? cfg.read(2, PCI_SUBSYSTEM_VENDOR_ID) : 0,
    subsystemDevice: type0 ? cfg.read(2, PCI_SUBSYSTEM_ID) : 0,
    command: cfg.read(2, PCI_COMMAND),
    status: cfg.read(2, PCI_STATUS),
    interruptPin: cfg.read(1, PCI_INTERRUPT_PIN),
  };
}

export type BarType = 'io' | 'mem32' | 'mem64' | 'mem1m';

export interface BarDecoding {
  /** BAR number 0-5 (the low half for a 64-bit BAR). */
  readonly index: number;
  readonly type: BarType;
  readonly prefetchable: boolean;
  /** Bus address the BAR holds (the device's view, not a CPU mapping). */
  readonly base: bigint;
}

/**
 * Decodes the six BAR registers of a type 0 header. A 64-bit BAR takes two
 * registers; the upper one produces no entry. Unimplemented BARs (all zero)
 * are left out.
 */
export function decodeBars(raw: readonly number[]): BarDecoding[] {
  const bars: BarDecoding[] = [];
  for (let i = 0; i < raw.length; i++) {
    const low = raw[i]! >>> 0;
    if (low === 0) continue;
    if (low & 1) {
      bars.push({ index: i, type: 'io', prefetchable: false, base: BigInt(low & ~0x3) & 0xffffffffn });
      continue;
    }
    const kind = (low >>> 1) & 0x3;
    const prefetchable = (low & 0x8) !== 0;
    const lowBase = BigInt(low & ~0xf) & 0xffffffffn;
    if (kind === 0x2) {
      if (i + 1 >= raw.length) throw new Error(`BAR${i} is 64-bit but has no upper half`);
      bars.push({ index: i, type: 'mem64', prefetchable, base: (BigInt(raw[i + 1]! >>> 0) << 32n) | lowBase });
      i++;
    } else {
      bars.push({ index: i, type: kind === 0x1 ? 'mem1m' : 'mem32', prefetchable, base: lowBase });
    }
  }
  return bars;
}

export function readBarRegisters(cfg: ConfigReader): number[] {
  return Array.from({ length: 6 }, (_, i) => cfg.read(4, PCI_BASE_ADDRESS_0 + 4 * i) >>> 0);
}

export const CAPABILITY_NAMES: Readonly<Record<number, string>> = {
  0x01: 'power-management', 0x03: 'vpd', 0x05: 'msi', 0x09: 'vendor', 0x0d: 'bridge-subsystem',
  0x10: 'pci-express', 0x11: 'msi-x', 0x12: 'sata', 0x13: 'advanced-features',
};

export const EXTENDED_CAPABILITY_NAMES: Readonly<Record<number, string>> = {
  0x0001: 'advanced-error-reporting', 0x0002: 'virtual-channel', 0x0003: 'serial-number',
  0x000b: 'vendor', 0x000e: 'ari', 0x0010: 'sr-iov', 0x0015: 'resizable-bar', 0x0018: 'ltr',
  0x001e: 'l1-substates',
};

export interface Capability {
  readonly id: number;
  readonly name: string;
  readonly offset: number;
  readonly extended: boolean;
}

function capabilityName(id: number, extended: boolean): string {
  const names = extended ? EXTENDED_CAPABILITY_NAMES : CAPABILITY_NAMES;
  return names[id] ?? `unknown-0x${id.toString(16)}`;
}

/**
 * Walks the standard capability list and, when `extendedSize` allows, the
 * PCIe extended list at 0x100. A looping or out-of-range chain ends the walk
 * instead of hanging it: config space comes from a device we do not trust.
 */
export function walkCapabilities(cfg: ConfigReader, extendedSize = CONFIG_SPACE_SIZE): Capability[] {
  const caps: Capability[] = [];
  if (cfg.read(2, PCI_STATUS) & PCI_STATUS_CAP_LIST) {
    const seen = new Set<number>();
    for (let at = cfg.read(1, PCI_CAPABILITY_LIST) & 0xfc; at >= 0x40 && at < CONFIG_SPACE_SIZE && !seen.has(at); ) {
      seen.add(at);
      const id = cfg.read(1, at);
      caps.push({ id, name: capabilityName(id, false), offset: at, extended: false });
      at = cfg.read(1, at + 1) & 0xfc;
    }
  }
  const isExpress = caps.some((c) => c.id === 0x10);
  if (isExpress && extendedSize > CONFIG_SPACE_SIZE) {
    const seen = new Set<number>();
    for (let at = CONFIG_SPACE_SIZE; at >= CONFIG_SPACE_SIZE && at + 4 <= extendedSize && !seen.has(at); ) {
      seen.add(at);
      const header = cfg.read(4, at) >>> 0;
      if (header === 0 || header === 0xffffffff) break;
      const id = header & 0xffff;
      caps.push({ id, name: capabilityName(id, true), offset: at, extended: true });
      at = (header >>> 20) & 0xffc;
    }
  }
  return caps;
}

export interface MsiCapability {
  readonly offset: number;
  /** Vectors the function can generate (Multiple Message Capable). */
  readonly vectors: number;
  readonly address64: boolean;
  readonly perVectorMasking: boolean;
  /** MSI Enable (control bit 0): the function signals by MSI now. */
  readonly enabled: boolean;
}

export function decodeMsi(cfg: ConfigReader, offset: number): MsiCapability {
  const control = cfg.read(2, offset + 2);
  return {
    offset,
    vectors: 1 << ((control >>> 1) & 0x7),
    address64: (control & (1 << 7)) !== 0,
    perVectorMasking: (control & (1 << 8)) !== 0,
    enabled: (control & 1) !== 0,
  };
}

export interface MsixCapability {
  readonly offset: number;
  readonly vectors: number;
  readonly tableBar: number;
  readonly tableOffset: number;
  readonly pbaBar: number;
  readonly pbaOffset: number;
  /** MSI-X Enable (control bit 15). */
  readonly enabled: boolean;
}

export function decodeMsix(cfg: ConfigReader, offset: number): MsixCapability {
  const control = cfg.read(2, offset + 2);
  const table = cfg.read(4, offset + 4) >>> 0;
  const pba = cfg.read(4, offset + 8) >>> 0;
  return {
    offset,
    vectors: (control & 0x7ff) + 1,
    tableBar: table & 0x7,
    tableOffset: table & ~0x7,
    pbaBar: pba & 0x7,
    pbaOffset: pba & ~0x7,
    enabled: (control & 0x8000) !== 0,
  };
}

export function formatId(n: number, digits = 4): string {
  return n.toString(16).padStart(digits, '0');
}
