/**
 * bus_dmamap_t: a map loads a range of DMA memory, or of a page-aligned
 * SharedArrayBuffer the kernel maps for the load's lifetime, and gives the
 * device its segments until unload().
 */
import { UpciError } from '../kernel/errors.js';
import type { DmaAccess, DmaMapping } from '../kernel/port.js';
import { addressOf } from '../shm/mapping.js';
import { DmaConstraintError, hex, released } from './dma-errors.js';
import { DmaMemory, memoryOfBuffer, memoryState, type MemoryState } from './dma-memory.js';
import { contiguousStart, type DmaOwner, type Holding } from './dma-owner.js';
import type { DmaSegment, DmaTag } from './dma-tag.js';

/** bus_dmamap_sync operations (NetBSD's BUS_DMASYNC_* values); OR them together. */
export const DmaSync = {
  /** Before the device writes the memory (a device → RAM transfer). */
  PREREAD: 0x01,
  /** After the device wrote it, before the CPU reads. */
  POSTREAD: 0x02,
  /** After the CPU wrote the memory, before the device reads it (RAM → device). */
  PREWRITE: 0x04,
  /** After the device read it. */
  POSTWRITE: 0x08,
} as const;

export interface LoadOptions {
  /** For a SharedArrayBuffer source: IOMMU permissions of its mapping. Default 'both'. */
  readonly access?: DmaAccess;
}

/** A full fence: a sequentially consistent read-modify-write (a locked instruction on x86). */
const fenceCell = new Int32Array(new SharedArrayBuffer(4));

/** What a load holds in the kernel: DMA memory's mapping, or one of its own for a SharedArrayBuffer. */
type LoadSource =
  | { readonly memory: MemoryState; readonly offset: number }
  | { readonly memory: undefined; readonly mapping: DmaMapping; readonly offset: number };

/** bus_dmamap_t, unloaded: has no segments. load() gives a LoadedDmaMap. */
export class DmaMap {
  #current: LoadedDmaMap | undefined;
  #destroyed = false;
  readonly #owner: DmaOwner;

  /** @internal use DmaTag.createMap */
  constructor(
    readonly tag: DmaTag,
    readonly maxSize: number,
    owner: DmaOwner,
  ) {
    this.#owner = owner;
  }

  /** The current load, if any. */
  get loaded(): LoadedDmaMap | undefined {
    return this.#current?.isLoaded ? this.#current : undefined;
  }

  /**
   * bus_dmamap_load: makes [offset, offset+length) of `source` reachable by
   * the device. DmaMemory is already mapped (no system call); a
   * SharedArrayBuffer is pinned and mapped now (DmaDomain.map) and unmapped
   * at unload(). Its address must be page-aligned and the pages the range
   * touches must lie inside it.
   */
  load(source: DmaMemory | SharedArrayBuffer, offset = 0, length?: number, options: LoadOptions = {}): LoadedDmaMap {
    const owner = this.#owner;
    owner.live();
    if (this.#destroyed) throw released('this map was destroyed');
    if (this.loaded !== undefined) throw new UpciError('BUSY', 'bus_dma: this map is already loaded', 'unload() it first, or create another map');
    if (source instanceof SharedArrayBuffer) source = memoryOfBuffer(source) ?? source;
    const total = source instanceof DmaMemory ? source.size : source.byteLength;
    const len = length ?? total - offset;
    if (!(Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(len) && len > 0 && offset + len <= total)) {
      throw new DmaConstraintError('range', `range [${offset}, ${offset} + ${len}) is not inside the ${total}-byte source`);
    }
    if (len > this.maxSize) throw new DmaConstraintError('maxSize', `${len} bytes exceed this map's maxSize of ${this.maxSize}`);

    if (source instanceof DmaMemory) {
      const memory = memoryState(source);
      if (memory === undefined) throw released('cannot load DMA memory that has been freed');
      if (memory.owner !== owner) throw new UpciError('OUT_OF_RANGE', 'bus_dma: this DMA memory belongs to another device', 'allocate it with a tag of this device');
      const segments = this.tag.segments(memory.busAddress + BigInt(offset), len);
      memory.loads++;
      return this.#track(new LoadedDmaMap(this, segments, len, owner, { memory, offset }));
    }

    const granule = BigInt(owner.domain.pageSize);
    const base = addressOf(source);
    if (base % granule !== 0n) {
      throw new DmaConstraintError('pageAlignment', `the SharedArrayBuffer at ${hex(base)} is not aligned to the IOMMU page (${granule} bytes)`, 'allocate it with allocShared() or tag.allocMemory()');
    }
    const first = (BigInt(offset) / granule) * granule;
    const last = ((BigInt(offset + len) + granule - 1n) / granule) * granule;
    if (last > BigInt(source.byteLength)) {
      throw new DmaConstraintError('pageAlignment', `the range ends in a partial page of the ${source.byteLength}-byte buffer; mapping that page would expose memory beyond it`, 'use a buffer whose length is a multiple of the page size');
    }
    const span = last - first;
    const within = BigInt(offset) - first;
    // The mapping starts on the tag's alignment, so the first byte (not the page) must be aligned within its page.
    if (within % (this.tag.alignment < granule ? this.tag.alignment : granule) !== 0n) {
      throw new DmaConstraintError('alignment', `offset ${offset} cannot give a bus address aligned to ${this.tag.alignment}`, `load at an offset that is a multiple of ${this.tag.alignment}`);
    }
    const mapping = owner.domain.map({ address: base + first, size: Number(span) }, this.tag.constraints(span, this.tag.maxSegments), options.access ?? 'both');
    let segments: DmaSegment[];
    try {
      segments = this.tag.segments(contiguousStart(mapping, Number(span)) + within, len);
    } catch (e) {
      owner.domain.unmap(mapping);
      throw e;
    }
    return this.#track(new LoadedDmaMap(this, segments, len, owner, { memory: undefined, mapping, offset: Number(within) }));
  }

  #track(loaded: LoadedDmaMap): LoadedDmaMap {
    this.#current = loaded;
    return loaded;
  }

  /** bus_dmamap_destroy. Refused while loaded. */
  destroy(): void {
    if (this.loaded !== undefined) throw new UpciError('BUSY', 'bus_dma: cannot destroy a loaded map', 'unload() it first');
    this.#destroyed = true;
  }
}

/** A loaded bus_dmamap_t: the segments a device may be given, until unload(). */
export class LoadedDmaMap {
  #segments: readonly DmaSegment[] | undefined;
  readonly #owner: DmaOwner;
  readonly #source: LoadSource;
  readonly #holding: Holding;

  /** @internal use DmaMap.load */
  constructor(
    readonly map: DmaMap,
    segments: DmaSegment[],
    /** Bytes loaded. */
    readonly length: number,
    owner: DmaOwner,
    source: LoadSource,
  ) {
    this.#segments = Object.freeze(segments);
    this.#owner = owner;
    this.#source = source;
    this.#holding = { mappedBytes: source.memory === undefined ? length : 0, teardown: () => this.#teardown() };
    owner.loads.add(this.#holding);
  }

  get isLoaded(): boolean {
    return this.#segments !== undefined;
  }

  /** The DMA segments (bus address + length), in order. Throws once unloaded. */
  get segments(): readonly DmaSegment[] {
    if (this.#segments === undefined) throw released('this map was unloaded; its bus addresses are no longer valid');
    return this.#segments;
  }

  /**
   * The bus address of byte `offset` of the loaded range, as a number (bus
   * addresses are below 2^53; checked at load): what a driver writes into a
   * descriptor. Throws once unloaded.
   */
  busAddress(offset = 0): number {
    const segs = this.segments;
    if (!(offset >= 0 && offset < this.length)) throw new DmaConstraintError('range', `offset ${offset} is outside the ${this.length} loaded bytes`);
    let at = offset;
    for (const s of segs) {
      if (at < s.length) return Number(s.busAddress) + at;
      at -= s.length;
    }
    throw new UpciError('KERNEL', 'bus_dma: segments do not cover the loaded length');
  }

  /**
   * bus_dmamap_sync. On x86 (and any platform VFIO accepts: since Linux 5.19
   * VFIO requires an IOMMU that enforces cache coherence for DMA) caches are
   * coherent with DMA, so every operation is a full fence: CPU writes before a
   * PREWRITE are globally visible before the doorbell write that follows it,
   * and CPU reads after a POSTREAD are not hoisted above it. The kernel port
   * does the rest (DmaDomain.sync: nothing under VFIO; pciuser(4)'s
   * bus_dmamap_sync, where bounce buffers and non-coherent caches are the
   * kernel's business).
   *
   * Contract for a non-coherent platform (not supported by this
   * implementation): PREWRITE must clean (write back) the cache lines of the
   * range, PREREAD must clean or invalidate them so no dirty line is written
   * over the device's data later, POSTREAD must invalidate them before the CPU
   * reads, POSTWRITE needs nothing beyond ordering. That needs cache
   * maintenance on the buffer's lines, which would go through the kernel port.
   */
  sync(ops: number, offset = 0, length: number = this.length - offset): void {
    if (this.#segments === undefined) throw released('cannot sync a map that was unloaded');
    if ((ops & ~0x0f) !== 0 || ops === 0) throw new UpciError('OUT_OF_RANGE', `bus_dma: sync operations ${hex(ops)} are not a combination of DmaSync flags`);
    if (!(offset >= 0 && length >= 0 && offset + length <= this.length)) {
      throw new DmaConstraintError('range', `sync range [${offset}, ${offset} + ${length}) is outside the ${this.length} loaded bytes`);
    }
    Atomics.add(fenceCell, 0, 0);
    const source = this.#source;
    this.#owner.domain.sync(source.memory === undefined ? source.mapping : source.memory.mapping, ops, source.offset + offset, length);
  }

  /**
   * bus_dmamap_unload, once the device has finished with the range: the
   * segments become invalid; a SharedArrayBuffer source is unmapped from the
   * IOMMU and unpinned, and its IOVA quarantined. Legal while bus mastering
   * is on for the device's other DMA. Returns the map, unloaded, for reuse.
   */
  unload(): DmaMap {
    if (this.#segments === undefined) throw released('this map was already unloaded');
    this.#owner.live();
    this.#teardown();
    return this.map;
  }

  #teardown(): void {
    if (this.#segments === undefined) return;
    this.#segments = undefined;
    this.#owner.loads.delete(this.#holding);
    const source = this.#source;
    if (source.memory !== undefined) source.memory.loads--;
    else this.#owner.domain.unmap(source.mapping);
  }
}
