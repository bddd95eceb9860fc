/**
 * IOVA space of one IOMMU domain (one DmaDomain object: every device of an
 * IOMMU group shares it, so they share this allocator too).
 *
 * First fit over the kernel's valid IOVA ranges, in granules (the IOMMU's
 * smallest page). Two rules make driver bugs fault in the IOMMU instead of
 * corrupting memory:
 *  - IOVA 0 (the first granule) is never handed out, so a device programmed
 *    with a zeroed address register hits nothing;
 *  - every allocation is followed by one unmapped guard granule, so a DMA
 *    that overruns its buffer faults instead of landing in the neighbour.
 */
import { UpciError } from '../kernel/errors.js';
import type { IommuDmaDomain, IovaRange } from '../kernel/port.js';

export interface IovaRequest {
  /** Bytes, a multiple of the granule. */
  readonly size: bigint;
  /** Power of two; the start is a multiple of it (at least the granule). */
  readonly alignment: bigint;
  /** Highest usable address (inclusive): the whole allocation stays at or below it. */
  readonly limit: bigint;
  /** Power of two or 0: when size <= boundary the allocation does not cross a multiple of it. */
  readonly boundary: bigint;
}

interface Span {
  start: bigint;
  /** Exclusive, including the guard granule. */
  end: bigint;
}

const alignUp = (v: bigint, a: bigint) => ((v + a - 1n) / a) * a;

export class IovaAllocator {
  /** Sorted by start, non-overlapping. */
  private readonly used: Span[] = [];

  constructor(
    readonly ranges: readonly IovaRange[],
    readonly granule: bigint,
  ) {
    if (granule <= 0n || (granule & (granule - 1n)) !== 0n) throw new UpciError('KERNEL', `IOMMU page size ${granule} is not a power of two`);
  }

  /** Bytes currently handed out (without guards). */
  get allocations(): number {
    return this.used.length;
  }

  allocate(req: IovaRequest): bigint {
    const { size, limit, boundary } = req;
    const alignment = req.alignment > this.granule ? req.alignment : this.granule;
    if (size <= 0n || size % this.granule !== 0n) throw new UpciError('OUT_OF_RANGE', `IOVA request of ${size} bytes is not a positive multiple of ${this.granule}`);
    const keepInside = boundary > 0n && size <= boundary;
    const ranges = [...this.ranges].sort((a, b) => (a.start < b.start ? -1 : 1));
    for (const range of ranges) {
      let lo = range.start < this.granule ? this.granule : range.start;
      const hi = range.end < limit ? range.end : limit; // inclusive
      let i = 0;
      for (;;) {
        let start = alignUp(lo, alignment);
        if (keepInside && start / boundary !== (start + size - 1n) / boundary) start = alignUp(start, boundary);
        const end = start + size; // exclusive, without guard
        if (end - 1n > hi) break;
        // Skip allocations that end at or before `start`.
        while (i < this.used.length && this.used[i]!.end <= start) i++;
        const next = this.used[i];
        if (next === undefined || end + this.granule <= next.start) {
          this.used.splice(i, 0, { start, end: end + this.granule });
          return start;
        }
        lo = next.end;
      }
    }
    throw new UpciError(
      'OUT_OF_RANGE',
      `no free IOVA range of ${size} bytes (alignment 0x${alignment.toString(16)}${boundary > 0n ? `, boundary 0x${boundary.toString(16)}` : ''}) at or below 0x${limit.toString(16)} in the IOMMU's valid ranges ${this.ranges.map((r) => `[0x${r.start.toString(16)}-0x${r.end.toString(16)}]`).join(' ')}`,
      'free DMA memory or unload maps, or use a tag with a wider addressLimit if the device can reach it',
    );
  }

  release(start: bigint): void {
    const i = this.used.findIndex((s) => s.start === start);
    if (i < 0) throw new UpciError('KERNEL', `IOVA 0x${start.toString(16)} is not allocated (double free in bus_dma)`);
    this.used.splice(i, 1);
  }
}

const allocators = new WeakMap<IommuDmaDomain, IovaAllocator>();

/** The smallest page size in the IOMMU's bitmap, at least 4 KiB. */
export function iommuGranule(domain: IommuDmaDomain): bigint {
  const bits = domain.pageSizes;
  if (bits === 0n) return 4096n;
  const lowest = bits & -bits;
  return lowest < 4096n ? 4096n : lowest;
}

/** The one allocator of a DmaDomain (devices of one IOMMU group share it). */
export function allocatorFor(domain: IommuDmaDomain): IovaAllocator {
  let a = allocators.get(domain);
  if (a === undefined) {
    a = new IovaAllocator(domain.iovaRanges, iommuGranule(domain));
    allocators.set(domain, a);
  }
  return a;
}
