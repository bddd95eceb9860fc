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
 *    that overruns its buffer faults instead of landing in the neighbour;
 *  - a released range is quarantined, not handed out again at once (as
 *    Linux's IOMMU flush queue defers IOVA reuse): a device that still holds
 *    an old address after its map was unloaded faults in the IOMMU instead
 *    of writing into whichever buffer got the address next. The quarantine
 *    holds the last QUARANTINE_SPANS releases; only an allocation that would
 *    otherwise fail takes quarantined ranges back early, oldest first.
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

/** Released ranges kept out of use before they may be handed out again. */
export const QUARANTINE_SPANS = 1024;

export class IovaAllocator {
  /** Sorted by start, non-overlapping: live allocations and quarantined ones. */
  private readonly used: Span[] = [];
  /** Released spans still in `used`, oldest first. */
  private readonly quarantine: Span[] = [];

  constructor(
    readonly ranges: readonly IovaRange[],
    readonly granule: bigint,
  ) {
    if (granule <= 0n || (granule & (granule - 1n)) !== 0n) throw new UpciError('KERNEL', `IOMMU page size ${granule} is not a power of two`);
  }

  /** Ranges currently handed out (quarantined ones not counted). */
  get allocations(): number {
    return this.used.length - this.quarantine.length;
  }

  /** Released ranges not yet reusable. */
  get quarantined(): number {
    return this.quarantine.length;
  }

  /** Whether `iova` lies in a released range still in quarantine. */
  isQuarantined(iova: bigint): boolean {
    return this.quarantine.some((s) => iova >= s.start && iova < s.end);
  }

  allocate(req: IovaRequest): bigint {
    for (;;) {
      const start = this.fit(req);
      if (start !== undefined) return start;
      // Out of space: take back the oldest quarantined range before giving up.
      const oldest = this.quarantine.shift();
      if (oldest === undefined) throw this.exhausted(req);
      this.used.splice(this.used.indexOf(oldest), 1);
    }
  }

  private fit(req: IovaRequest): bigint | undefined {
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
    return undefined;
  }

  private exhausted(req: IovaRequest): UpciError {
    const { size, limit, boundary } = req;
    const alignment = req.alignment > this.granule ? req.alignment : this.granule;
    return new UpciError(
      'OUT_OF_RANGE',
      `no free IOVA range of ${size} bytes (alignment 0x${alignment.toString(16)}${boundary > 0n ? `, boundary 0x${boundary.toString(16)}` : ''}) at or below 0x${limit.toString(16)} in the IOMMU's valid ranges ${this.ranges.map((r) => `[0x${r.start.toString(16)}-0x${r.end.toString(16)}]`).join(' ')}`,
      'free DMA memory or unload maps, or use a tag with a wider addressLimit if the device can reach it',
    );
  }

  /** Called once the kernel dropped the range's mapping: it goes to quarantine. */
  release(start: bigint): void {
    const span = this.used.find((s) => s.start === start);
    if (span === undefined || this.quarantine.includes(span)) throw new UpciError('KERNEL', `IOVA 0x${start.toString(16)} is not allocated (double free in bus_dma)`);
    this.quarantine.push(span);
    if (this.quarantine.length > QUARANTINE_SPANS) this.used.splice(this.used.indexOf(this.quarantine.shift()!), 1);
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
