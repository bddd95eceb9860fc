/**
 * bus_dma_tag_t: the constraints of a device's DMA engine, and the one place
 * they are checked (segments()) before a device is given a bus address. A
 * tag makes the device's DMA memory, maps and pools.
 */
import { UpciError } from '../kernel/errors.js';
import type { DmaConstraints } from '../kernel/port.js';
import { DmaConstraintError, hex } from './dma-errors.js';
import { DmaMap } from './dma-map.js';
import { allocateMemory, type AllocOptions, type DmaMemory } from './dma-memory.js';
import type { DmaOwner } from './dma-owner.js';
import { DmaPool, type DmaPoolOptions } from './dma-pool.js';

export interface DmaTagOptions {
  /** Power of two: every segment's bus address is a multiple of it. Default 1. */
  readonly alignment?: number;
  /** 0 (none) or a power of two >= alignment: no segment crosses a multiple of it. Default 0. */
  readonly boundary?: number | bigint;
  /** Largest segment in bytes (rounded down to a multiple of alignment when splitting). Default: unlimited. */
  readonly maxSegmentSize?: number;
  /** Most segments one load may produce. Default: unlimited. */
  readonly maxSegments?: number;
  /** Highest bus address the device can reach, inclusive: e.g. (1n << 28n) - 1n. Default 2^64 - 1. */
  readonly addressLimit?: number | bigint;
  /** Largest total a map of this tag may load. Default: unlimited. */
  readonly maxSize?: number;
}

export interface DmaSegment {
  readonly busAddress: bigint;
  readonly length: number;
}

const MAX_U64 = (1n << 64n) - 1n;
const MAX_NUMBER_ADDRESS = 1n << 53n;
const isPow2 = (v: bigint) => v > 0n && (v & (v - 1n)) === 0n;

/** bus_dma_tag_t: the constraints of a device's DMA engine. */
export class DmaTag {
  readonly alignment: bigint;
  readonly boundary: bigint;
  readonly maxSegmentSize: bigint;
  readonly maxSegments: number;
  readonly addressLimit: bigint;
  readonly maxSize: number;
  /** Step used to split long segments: maxSegmentSize rounded down to alignment. */
  private readonly splitSize: bigint;
  readonly #owner: DmaOwner;

  /** @internal use BusDma.createTag */
  constructor(owner: DmaOwner, options: DmaTagOptions) {
    const alignment = BigInt(options.alignment ?? 1);
    const boundary = BigInt(options.boundary ?? 0);
    const maxSegmentSize = options.maxSegmentSize === undefined ? MAX_U64 : BigInt(options.maxSegmentSize);
    const maxSegments = options.maxSegments ?? Number.POSITIVE_INFINITY;
    const addressLimit = options.addressLimit === undefined ? MAX_U64 : BigInt(options.addressLimit);
    const maxSize = options.maxSize ?? Number.MAX_SAFE_INTEGER;
    if (!isPow2(alignment)) throw new DmaConstraintError('alignment', `alignment ${alignment} is not a power of two`);
    if (boundary !== 0n && (!isPow2(boundary) || boundary < alignment)) {
      throw new DmaConstraintError('boundary', `boundary ${hex(boundary)} is not 0 or a power of two >= the alignment (${alignment})`);
    }
    if (maxSegmentSize < alignment) throw new DmaConstraintError('maxSegmentSize', `maxSegmentSize ${maxSegmentSize} is below the alignment ${alignment}`);
    if (!(maxSegments >= 1) || (Number.isFinite(maxSegments) && !Number.isInteger(maxSegments))) {
      throw new DmaConstraintError('maxSegments', `maxSegments ${maxSegments} is not a positive integer`);
    }
    if (!(Number.isSafeInteger(maxSize) && maxSize > 0)) throw new DmaConstraintError('maxSize', `maxSize ${maxSize} is not a positive integer`);
    if (addressLimit < 0n || addressLimit > MAX_U64) throw new DmaConstraintError('addressLimit', `addressLimit ${hex(addressLimit)} is not a 64-bit address`);
    const unreachable = owner.domain.unreachable(addressLimit);
    if (unreachable !== undefined) throw new DmaConstraintError('addressLimit', unreachable);
    this.alignment = alignment;
    this.boundary = boundary;
    this.maxSegmentSize = maxSegmentSize;
    this.maxSegments = maxSegments;
    this.addressLimit = addressLimit;
    this.maxSize = maxSize;
    this.splitSize = (maxSegmentSize / alignment) * alignment;
    this.#owner = owner;
  }

  /** A child tag: the stricter of this tag's constraints and `options` (bus_dma_tag_create with a parent). */
  derive(options: DmaTagOptions): DmaTag {
    this.#owner.live();
    const max = (a: bigint, b: number | bigint | undefined) => (b === undefined || a > BigInt(b) ? a : BigInt(b));
    const min = (a: bigint, b: number | bigint | undefined) => (b === undefined || a < BigInt(b) ? a : BigInt(b));
    const boundary = options.boundary === undefined || BigInt(options.boundary) === 0n
      ? this.boundary
      : this.boundary === 0n ? BigInt(options.boundary) : min(this.boundary, options.boundary);
    return new DmaTag(this.#owner, {
      alignment: Number(max(this.alignment, options.alignment)),
      boundary,
      maxSegmentSize: Number(min(this.maxSegmentSize, options.maxSegmentSize)),
      maxSegments: Math.min(this.maxSegments, options.maxSegments ?? Number.POSITIVE_INFINITY),
      addressLimit: min(this.addressLimit, options.addressLimit),
      maxSize: Math.min(this.maxSize, options.maxSize ?? Number.MAX_SAFE_INTEGER),
    });
  }

  /** @internal What the kernel is asked for: this tag's window, for a range that must stay one segment if it can. */
  constraints(size: bigint, maxSegments: number): DmaConstraints {
    // As the IOVA allocator does: a range no longer than the boundary must not cross one; a longer one is split at loads.
    const boundary = this.boundary > 0n && size <= this.boundary ? this.boundary : 0n;
    return { alignment: this.alignment, boundary, addressLimit: this.addressLimit, maxSegments };
  }

  /**
   * bus_dmamem_alloc + bus_dmamem_map: `size` bytes (rounded up to the
   * domain's page) of zeroed, page-aligned shared memory, reachable by the
   * device at one bus-contiguous range that satisfies this tag.
   */
  allocMemory(size: number, options: AllocOptions = {}): DmaMemory {
    const owner = this.#owner;
    owner.live();
    this.checkSize(size);
    const granule = BigInt(owner.domain.pageSize);
    const span = ((BigInt(size) + granule - 1n) / granule) * granule;
    // The whole memory must be loadable in one go under this tag.
    this.countSegments(0n, span);
    return allocateMemory(owner, this, Number(span), options.access ?? 'both');
  }

  /**
   * A pool of `entries` fixed-size buffers in one allocation, loaded once,
   * with each entry's bus address precomputed (ixy's mempool): no system
   * call, BigInt or object per I/O. Each entry is one segment under this tag.
   */
  createPool(options: DmaPoolOptions): DmaPool {
    return new DmaPool(this, options);
  }

  /** bus_dmamap_create: a map that can load up to `maxSize` bytes at a time. */
  createMap(maxSize: number = this.maxSize): DmaMap {
    this.#owner.live();
    this.checkSize(maxSize);
    return new DmaMap(this, maxSize, this.#owner);
  }

  private checkSize(size: number): void {
    if (!(Number.isSafeInteger(size) && size > 0)) throw new DmaConstraintError('range', `size ${size} is not a positive integer`);
    if (size > this.maxSize) throw new DmaConstraintError('maxSize', `${size} bytes exceed the tag's maxSize of ${this.maxSize}`);
  }

  /** @internal Throws unless [start, start+length) can be cut into segments under this tag; returns how many. */
  countSegments(start: bigint, length: bigint): number {
    let n = 0;
    let at = start;
    const end = start + length;
    while (at < end) {
      at = this.segmentEnd(at, end);
      n++;
    }
    if (n > this.maxSegments) {
      throw new DmaConstraintError(
        'maxSegments',
        `${length} bytes need ${n} segments under this tag (maxSegmentSize ${this.maxSegmentSize === MAX_U64 ? 'unlimited' : this.maxSegmentSize}, boundary ${hex(this.boundary)}) but maxSegments is ${this.maxSegments}`,
        'load less at a time, or use a tag that allows more or longer segments',
      );
    }
    return n;
  }

  private segmentEnd(at: bigint, end: bigint): bigint {
    let next = at + this.splitSize < end ? at + this.splitSize : end;
    if (this.boundary !== 0n) {
      const b = (at / this.boundary + 1n) * this.boundary;
      if (b < next) next = b;
    }
    return next;
  }

  /**
   * @internal The segment list for bus addresses [busStart, busStart+length):
   * every constraint is checked here, the last line before a device sees it.
   */
  segments(busStart: bigint, length: number): DmaSegment[] {
    const len = BigInt(length);
    if (busStart % this.alignment !== 0n) {
      throw new DmaConstraintError('alignment', `bus address ${hex(busStart)} is not aligned to the tag's ${this.alignment} bytes`, `load at an offset that is a multiple of ${this.alignment}`);
    }
    if (busStart + len - 1n > this.addressLimit) {
      throw new DmaConstraintError('addressLimit', `bus addresses up to ${hex(busStart + len - 1n)} exceed the tag's addressLimit ${hex(this.addressLimit)}`, 'load memory allocated under a tag with this addressLimit');
    }
    // Drivers get bus addresses as numbers (busAddress()): exact only below 2^53.
    if (busStart + len > MAX_NUMBER_ADDRESS) throw new UpciError('KERNEL', `bus_dma: bus address ${hex(busStart + len - 1n)} is beyond 2^53`);
    this.countSegments(busStart, len);
    const out: DmaSegment[] = [];
    let at = busStart;
    const end = busStart + len;
    while (at < end) {
      const next = this.segmentEnd(at, end);
      out.push(Object.freeze({ busAddress: at, length: Number(next - at) }));
      at = next;
    }
    return out;
  }
}
