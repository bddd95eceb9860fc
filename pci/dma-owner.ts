/**
 * What a device's tags, memory and maps share of its bus_dma (pci/bus-dma.ts
 * BusDma): the kernel's DMA domain, and the book of what is mapped, so that
 * closing the device tears down whatever the driver left. They keep it in
 * private fields: nothing a driver holds reaches it.
 */
import { UpciError } from '../kernel/errors.js';
import type { DmaDomain, DmaMapping } from '../kernel/port.js';

/** One kernel mapping, or a load of DMA memory, that the device's teardown must undo. */
export interface Holding {
  /** Bytes the device reaches through a kernel mapping of this holding's own; 0 for a load of DmaMemory. */
  readonly mappedBytes: number;
  teardown(): void;
}

export interface DmaOwner {
  readonly address: string;
  readonly domain: DmaDomain;
  /** Throws RELEASED once the device is closed. */
  live(): void;
  /** Live loads, torn down first at close; then memories. */
  readonly loads: Set<Holding>;
  readonly memories: Set<Holding>;
}

/** The first bus address of a mapping the kernel was asked to make as one range of `size` bytes; refuses any other answer. */
export function contiguousStart(mapping: DmaMapping, size: number): bigint {
  const [segment, ...more] = mapping.segments;
  if (segment === undefined || more.length > 0 || segment.length < size || mapping.size < size) {
    throw new UpciError('KERNEL', `bus_dma: the kernel returned ${mapping.segments.length} segment(s) for ${size} bytes asked for as one`);
  }
  return segment.busAddress;
}
