/**
 * pciuser(4)'s limits, as kernel/netbsd/sys/dev/pci/pci_user.c checks them,
 * checked here first so that a request the kernel would refuse gets an
 * UpciError naming the limit instead of an EINVAL or EPERM. One function per
 * kernel check; test/unit/netbsd-limits.test.ts tests both sides of each.
 * The DMA caps (hw.pciuser.dma_file_max, dma_total_max) are sysctl settings
 * of the running kernel: only their error (EDQUOT) is translated.
 */
import { UpciError } from '../errors.js';
import type { DmaConstraints, MmapArea } from '../port.js';
import * as abi from './pciuser-abi.js';

/** NetBSD/amd64's page, the only layout pciuser-abi.ts is checked for. */
export const PAGE_SIZE = 4096;
/** pciuser_size_ok(): sizes stay below the mmap cookie's 1 TiB per object. */
export const DMA_SIZE_MAX = 2 ** abi.PCIUSER_MMAP_SHIFT - 1;
/** pciuser_dmatag(): a device that cannot reach 16 MiB is not supported. */
export const DMA_ADDRESS_LIMIT_MIN = 0xffffffn;

const U64_MAX = (1n << 64n) - 1n;

const isPowerOfTwo = (x: bigint): boolean => x > 0n && (x & (x - 1n)) === 0n;

/** What DMAMEM_ALLOC, DMAMAP_CREATE and DMAMAP_LOAD are asked for one allocation. */
export interface DmaRequest {
  /** Bytes, rounded up to pages, as the kernel allocates and charges them. */
  readonly size: number;
  /** pdm_maxsegs = pdc_nsegments = pdl_maxsegs: the load's array holds all the map can have. */
  readonly maxSegments: number;
  /** pdm_maxaddr/pdc_maxaddr: 0 for "whatever the tag reaches". */
  readonly maxaddr: bigint;
  readonly alignment: bigint;
  readonly boundary: bigint;
}

/**
 * The kernel's checks of pciuser_dmamem_alloc() and pciuser_dmamap_create()
 * for `size` bytes under `constraints`.
 */
export function dmaRequest(size: number, constraints: DmaConstraints): DmaRequest {
  if (!Number.isSafeInteger(size) || size < 1 || size > DMA_SIZE_MAX) {
    throw new UpciError('OUT_OF_RANGE', `pciuser(4) DMA memory is 1 byte to ${DMA_SIZE_MAX} bytes (1 TiB - 1); ${size} asked for`);
  }
  const { alignment, boundary, addressLimit, maxSegments } = constraints;
  if (alignment !== 0n && !isPowerOfTwo(alignment)) {
    throw new UpciError('OUT_OF_RANGE', `DMA alignment ${alignment} is not a power of two`);
  }
  if (boundary !== 0n && (!isPowerOfTwo(boundary) || boundary < BigInt(PAGE_SIZE))) {
    throw new UpciError(
      'OUT_OF_RANGE',
      `DMA boundary ${boundary} is neither 0 nor a power of two of at least the page (${PAGE_SIZE})`,
      'bus_dma(9) cannot honour a smaller boundary; a device with one needs its transfers split by the driver',
    );
  }
  const rounded = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
  if (!Number.isInteger(maxSegments) || maxSegments < 1) {
    throw new UpciError('OUT_OF_RANGE', `DMA memory needs at least one segment; maxSegments ${maxSegments}`);
  }
  if (boundary !== 0n && boundary < BigInt(rounded) && maxSegments === 1) {
    throw new UpciError('OUT_OF_RANGE', `${rounded} bytes in one segment cannot stay within a ${boundary}-byte boundary`, 'allow more segments or allocate less');
  }
  // x86 bus_dmamem_alloc splits one contiguous run at each boundary and
  // returns EFBIG (losing the pages) past maxsegs; the kernel refuses every
  // request that could need more segments than given (issue 24, N4).
  const pages = rounded / PAGE_SIZE;
  const segments = Math.min(maxSegments, pages, abi.PCIUSER_DMA_MAXSEGS);
  if (boundary !== 0n && boundary < BigInt(rounded)) {
    const align = alignment < BigInt(PAGE_SIZE) ? BigInt(PAGE_SIZE) : alignment;
    const need = Math.min(pages, Number((BigInt(rounded) + boundary - 1n) / boundary) + (align < boundary ? 1 : 0));
    if (segments < need) {
      throw new UpciError('OUT_OF_RANGE', `${rounded} bytes within a ${boundary}-byte boundary may need ${need} segments; ${segments} allowed`, 'allow more segments or allocate less');
    }
  }
  if (addressLimit < DMA_ADDRESS_LIMIT_MIN) {
    throw new UpciError('OUT_OF_RANGE', `pciuser(4) needs a device that reaches bus addresses up to at least 0x${DMA_ADDRESS_LIMIT_MIN.toString(16)}; this one reaches 0x${addressLimit.toString(16)}`);
  }
  return {
    size: rounded,
    maxSegments: segments,
    maxaddr: addressLimit >= U64_MAX ? 0n : addressLimit,
    alignment,
    boundary,
  };
}

const SYNC_PRE = abi.PCIUSER_SYNC_PREREAD | abi.PCIUSER_SYNC_PREWRITE;
const SYNC_POST = abi.PCIUSER_SYNC_POSTREAD | abi.PCIUSER_SYNC_POSTWRITE;

/**
 * pciuser_dmamap_sync()'s checks of the values alone (issue 24, N2): some
 * PRE or some POST operations but not both (x86 bus_dmamap_sync panics on
 * the mix), nothing else, and a length of at least a byte (a zero length
 * panics the ports that check). The range against the loaded map is the
 * kernel's to check.
 */
export function syncRequest(ops: number, offset: number, length: number): void {
  if (!Number.isInteger(ops) || ops <= 0 || (ops & ~(SYNC_PRE | SYNC_POST)) !== 0) {
    throw new UpciError('OUT_OF_RANGE', `DMA sync operations 0x${ops.toString(16)}: only PREREAD, PREWRITE, POSTREAD and POSTWRITE, at least one`);
  }
  if ((ops & SYNC_PRE) !== 0 && (ops & SYNC_POST) !== 0) {
    throw new UpciError('OUT_OF_RANGE', `DMA sync operations 0x${ops.toString(16)} mix PRE and POST`, 'sync PRE before the device runs and POST after, in two calls');
  }
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 1) {
    throw new UpciError('OUT_OF_RANGE', `DMA sync of ${length} bytes at ${offset}: at least one byte at a non-negative offset`);
  }
}

/** A range of a BAR that belongs to the kernel (MSI-X table or PBA). */
export interface BarHole {
  readonly offset: number;
  readonly size: number;
}

/** pciuser_bar_hole(): whether [offset, offset + length) meets a hole; `pages` widens holes to whole pages, as mmap sees them. */
export function touchesHole(holes: readonly BarHole[], offset: number, length: number, pages: boolean): boolean {
  return holes.some((h) => {
    const lo = pages ? Math.floor(h.offset / PAGE_SIZE) * PAGE_SIZE : h.offset;
    const hi = pages ? Math.ceil((h.offset + h.size) / PAGE_SIZE) * PAGE_SIZE : h.offset + h.size;
    return offset < hi && lo < offset + length;
  });
}

/** The parts of a mappable BAR of `size` bytes that mmap accepts: everything but the pages of its holes (VFIO's sparse mmap). */
export function barMmapAreas(size: number, holes: readonly BarHole[]): MmapArea[] {
  const cuts = holes
    .map((h) => ({ lo: Math.floor(h.offset / PAGE_SIZE) * PAGE_SIZE, hi: Math.min(size, Math.ceil((h.offset + h.size) / PAGE_SIZE) * PAGE_SIZE) }))
    .sort((a, b) => a.lo - b.lo);
  const areas: MmapArea[] = [];
  let at = 0;
  for (const { lo, hi } of cuts) {
    if (lo > at) areas.push({ offset: at, size: lo - at });
    at = Math.max(at, hi);
  }
  if (at < size) areas.push({ offset: at, size: size - at });
  return areas;
}
