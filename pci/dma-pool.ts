/**
 * A DMA pool: N fixed-size buffers in one DmaMemory, loaded once, each
 * entry's bus address precomputed in a Float64Array (ixy's mempool, SPDK's
 * preallocated request buffers). The hot path costs no system call, no
 * BigInt and no object: alloc() pops an index from a free stack in an
 * Int32Array, busAddresses[i] is what the device is told, release(i) pushes
 * the index back. Rings (descriptor arrays, NVMe queues, PRP lists) are
 * pools too: `entries` descriptors of `entrySize` bytes, or one entry.
 *
 *   const pool = tag.createPool({ entrySize: 2048, entries: 512 });
 *   const i = pool.alloc();                 // -1 when empty
 *   descriptor.buffer = pool.busAddresses[i];
 *   new Uint8Array(pool.buffer, pool.offsetOf(i), 2048) ...
 *   pool.release(i);   ...   pool.free();
 */
import { UpciError } from '../kernel/errors.js';
import type { DmaAccess } from '../kernel/port.js';
import { DmaConstraintError } from './dma-errors.js';
import type { LoadedDmaMap } from './dma-map.js';
import type { DmaMemory } from './dma-memory.js';
import type { DmaTag } from './dma-tag.js';

export interface DmaPoolOptions {
  /** Bytes per entry; the stride is this rounded up to the tag's alignment. */
  readonly entrySize: number;
  readonly entries: number;
  /** What the device may do to the memory (IOMMU permissions). Default 'both'. */
  readonly access?: DmaAccess;
}

export class DmaPool {
  readonly entrySize: number;
  readonly entries: number;
  /** Distance between entries' starts: entrySize rounded up to the tag's alignment. */
  readonly stride: number;
  /** Bus address of each entry, exact (below 2^53). */
  readonly busAddresses: Float64Array;
  private readonly memory: DmaMemory;
  private readonly loaded: LoadedDmaMap;
  /** Free entry indexes as a stack: freeStack[0..freeCount). */
  private readonly freeStack: Int32Array;
  /** 1 while an entry is handed out, to refuse double releases. */
  private readonly inUse: Uint8Array;
  private freeCount: number;

  /** @internal use DmaTag.createPool */
  constructor(tag: DmaTag, options: DmaPoolOptions) {
    const { entrySize, entries } = options;
    if (!(Number.isSafeInteger(entrySize) && entrySize > 0)) throw new DmaConstraintError('range', `pool entry size ${entrySize} is not a positive integer`);
    if (!(Number.isSafeInteger(entries) && entries > 0)) throw new DmaConstraintError('range', `pool entry count ${entries} is not a positive integer`);
    const alignment = Number(tag.alignment);
    const stride = Math.ceil(entrySize / alignment) * alignment;
    if (tag.boundary > 0n && stride <= tag.boundary && Number(tag.boundary) % stride !== 0) {
      throw new DmaConstraintError('boundary', `pool entries of ${stride} bytes would cross the tag's boundary 0x${tag.boundary.toString(16)}`, 'use an entry size that divides the boundary');
    }
    this.entrySize = entrySize;
    this.entries = entries;
    this.stride = stride;
    const memory = tag.allocMemory(stride * entries, { access: options.access ?? 'both' });
    let loaded: LoadedDmaMap | undefined;
    this.busAddresses = new Float64Array(entries);
    try {
      loaded = tag.createMap(memory.size).load(memory);
      for (let i = 0; i < entries; i++) {
        const bus = loaded.busAddress(i * stride);
        // Every entry must be one segment the device can be given as is.
        const [segment, ...more] = tag.segments(BigInt(bus), entrySize);
        if (segment === undefined || more.length > 0) {
          throw new DmaConstraintError('maxSegmentSize', `pool entry ${i} of ${entrySize} bytes is not one segment under the tag`, 'use a smaller entry size or a tag with longer segments');
        }
        this.busAddresses[i] = bus;
      }
    } catch (e) {
      if (loaded?.isLoaded) loaded.unload();
      memory.free();
      throw e;
    }
    this.memory = memory;
    this.loaded = loaded;
    this.freeStack = new Int32Array(entries);
    for (let i = 0; i < entries; i++) this.freeStack[i] = entries - 1 - i;
    this.freeCount = entries;
    this.inUse = new Uint8Array(entries);
  }

  /** The memory of every entry; entry i starts at offsetOf(i). Throws once freed. */
  get buffer(): SharedArrayBuffer {
    return this.memory.buffer;
  }

  get freed(): boolean {
    return this.memory.freed;
  }

  /** Entries not handed out. */
  get available(): number {
    return this.freeCount;
  }

  offsetOf(index: number): number {
    return index * this.stride;
  }

  /** An entry's index, or -1 when every entry is handed out. */
  alloc(): number {
    if (this.freeCount === 0) return -1;
    const i = this.freeStack[--this.freeCount]!;
    this.inUse[i] = 1;
    return i;
  }

  release(index: number): void {
    if (this.inUse[index] !== 1) throw new UpciError('OUT_OF_RANGE', `DMA pool: entry ${index} is not handed out (a double release, or not an index of this pool of ${this.entries})`);
    this.inUse[index] = 0;
    this.freeStack[this.freeCount++] = index;
  }

  /** bus_dmamap_sync over [offset, offset+length) of entry `index` (default: the whole entry). */
  sync(ops: number, index: number, offset = 0, length = this.entrySize - offset): void {
    if (!(index >= 0 && index < this.entries && offset >= 0 && length >= 0 && offset + length <= this.entrySize)) {
      throw new DmaConstraintError('range', `sync of [${offset}, ${offset} + ${length}) of entry ${index} is outside the pool's ${this.entries} entries of ${this.entrySize} bytes`);
    }
    this.loaded.sync(ops, index * this.stride + offset, length);
  }

  /** Unloads and frees the pool (its IOVA goes to quarantine). Entries still handed out become invalid. */
  free(): void {
    if (this.loaded.isLoaded) this.loaded.unload();
    this.memory.free();
  }
}
