/**
 * Where the driver's DMA memory comes from: one seam. A BufferArea is one
 * DMA allocation cut into `count` entries of `entrySize` bytes, each with its
 * bus address computed once (ixy's mempool: nothing is allocated or mapped
 * per packet). Rings and packet buffers both come from here.
 */
import type { BusDma, DmaTag, LoadedDmaMap } from '../../pci/bus-dma.js';
import { DmaSync } from '../../pci/bus-dma.js';
import { RING_ALIGN } from './registers.js';

export interface BufferArea {
  readonly count: number;
  readonly entrySize: number;
  /** The whole area; entry i is bytes [i * entrySize, (i + 1) * entrySize). */
  readonly buffer: SharedArrayBuffer;
  /** Bus address of entry i, split in 32-bit halves so descriptors are written without a BigInt. */
  readonly busLow: Uint32Array;
  readonly busHigh: Uint32Array;
  readonly busBase: bigint;
  /** bus_dmamap_sync over the whole area (a full fence on x86: one per batch, not per packet). */
  sync(ops: number): void;
}

/** The tag every e1000e DMA allocation is made under: 64-bit addresses, one contiguous segment per area. */
export function e1000eTag(dma: BusDma): DmaTag {
  return dma.createTag({ alignment: RING_ALIGN, maxSegments: 1 });
}

export function allocateArea(tag: DmaTag, count: number, entrySize: number): BufferArea {
  const memory = tag.allocMemory(count * entrySize);
  const loaded: LoadedDmaMap = tag.createMap(memory.size).load(memory);
  const busBase = loaded.segments[0]!.busAddress;
  const busLow = new Uint32Array(count);
  const busHigh = new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    const bus = busBase + BigInt(i * entrySize);
    busLow[i] = Number(bus & 0xffffffffn);
    busHigh[i] = Number(bus >> 32n);
  }
  return {
    count,
    entrySize,
    buffer: memory.buffer,
    busLow,
    busHigh,
    busBase,
    sync: (ops) => loaded.sync(ops),
  };
}

export { DmaSync };
