/**
 * What a driver's register() does with the memory (nvme, virtio-blk): one
 * DMA map of the whole of it, in one piece, so that a request on any range
 * of it is one bus address plus an offset.
 */
import type { DmaTag, LoadedDmaMap } from '../pci/bus-dma.js';
import { BlockRequestError } from './block.js';

/** `memory` mapped for DMA through `tag` as one segment, or a BlockRequestError naming why not (`name`: the device's). */
export function mapWhole(name: string, tag: DmaTag, memory: SharedArrayBuffer): LoadedDmaMap {
  let map: LoadedDmaMap;
  try {
    map = tag.createMap(memory.byteLength).load(memory, 0, memory.byteLength, { access: 'both' });
  } catch (e) {
    throw new BlockRequestError(`${name}: the memory cannot be mapped for DMA: ${e instanceof Error ? e.message : String(e)}`, 'register page-aligned shared memory of whole pages: allocShared() or allocBuffer()');
  }
  if (map.segments.length !== 1) {
    map.unload();
    throw new BlockRequestError(`${name}: the memory was mapped in ${map.segments.length} pieces, not one`, 'register smaller memory');
  }
  return map;
}
