/**
 * IOVA space of one IOMMU domain in one thread (kernel/linux/iommu-dma.ts:
 * every device of an IOMMU group shares the domain, so they share this
 * allocator too): the domain's whole space in the thread that opened it, a
 * window reserved from that space in a driver thread that adopted a device.
 *
 * Next fit over the kernel's valid IOVA ranges, in granules (the IOMMU's
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
import { UpciError } from '../errors.js';
import type { BusRange } from '../port.js';

/** A range of IOVAs the IOMMU accepts (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE), or a window of them; `end` inclusive. */
export type IovaRange = BusRange;

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
  /** Released, waiting out its quarantine. */
  quarantined: boolean;
}

/** Ranges as an error message names them. */
export const describeRanges = (ranges: readonly IovaRange[]) => ranges.map((r) => `[0x${r.start.toString(16)}-0x${r.end.toString(16)}]`).join(' ');

const alignUp = (v: bigint, a: bigint) => ((v + a - 1n) / a) * a;

/** Released ranges kept out of use before they may be handed out again. */
export const QUARANTINE_SPANS = 1024;

/**
 * Next fit from a cursor that moves past each allocation (as Linux's IOVA
 * allocator starts from its cached node): the common case is a bump with no
 * search, and a freed range is only reached again after the cursor went
 * round. `used` is sorted, so lookups are binary searches.
 */
export class IovaAllocator {
  /** Sorted by start, non-overlapping: live allocations and quarantined ones. */
  private readonly used: Span[] = [];
  /** Released spans still in `used`, oldest at quarantineHead: a ring of QUARANTINE_SPANS. */
  private readonly quarantine: (Span | undefined)[] = new Array<Span | undefined>(QUARANTINE_SPANS).fill(undefined);
  private quarantineHead = 0;
  private quarantineLength = 0;
  private readonly sortedRanges: readonly IovaRange[];
  /** Where the next search starts. */
  private cursor = 0n;

  constructor(
    readonly ranges: readonly IovaRange[],
    readonly granule: bigint,
    /** What `ranges` are, for errors. */
    readonly space = `the IOMMU's valid IOVA ranges ${describeRanges(ranges)}`,
  ) {
    if (granule <= 0n || (granule & (granule - 1n)) !== 0n) throw new UpciError('KERNEL', `IOMMU page size ${granule} is not a power of two`);
    this.sortedRanges = [...ranges].sort((a, b) => (a.start < b.start ? -1 : 1));
  }

  /** Ranges currently handed out (quarantined ones not counted). */
  get allocations(): number {
    return this.used.length - this.quarantineLength;
  }

  /** Released ranges not yet reusable. */
  get quarantined(): number {
    return this.quarantineLength;
  }

  /** Whether `iova` lies in a released range still in quarantine. */
  isQuarantined(iova: bigint): boolean {
    const span = this.used[this.firstEndingAfter(iova)];
    return span !== undefined && span.start <= iova && span.quarantined;
  }

  /** Index of the first span whose end is above `at` (ends are sorted too: spans do not overlap). */
  private firstEndingAfter(at: bigint): number {
    let lo = 0;
    let hi = this.used.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.used[mid]!.end <= at) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  allocate(req: IovaRequest): bigint {
    const { size } = req;
    if (size <= 0n || size % this.granule !== 0n) throw new UpciError('OUT_OF_RANGE', `IOVA request of ${size} bytes is not a positive multiple of ${this.granule}`);
    for (;;) {
      const start = this.fit(req, this.cursor) ?? (this.cursor > 0n ? this.fit(req, 0n) : undefined);
      if (start !== undefined) {
        this.cursor = start + size + this.granule;
        return start;
      }
      // Out of space: take back the oldest quarantined range before giving up.
      if (this.quarantineLength === 0) throw this.exhausted(req);
      this.evictOldest();
    }
  }

  /** First fit at or above `from`, or undefined. */
  private fit(req: IovaRequest, from: bigint): bigint | undefined {
    const { size, limit, boundary } = req;
    const alignment = req.alignment > this.granule ? req.alignment : this.granule;
    const keepInside = boundary > 0n && size <= boundary;
    for (const range of this.sortedRanges) {
      let lo = range.start < this.granule ? this.granule : range.start;
      if (lo < from) lo = from;
      const hi = range.end < limit ? range.end : limit; // inclusive
      if (lo > hi) continue;
      let i = this.firstEndingAfter(lo);
      for (;;) {
        let start = alignUp(lo, alignment);
        if (keepInside && start / boundary !== (start + size - 1n) / boundary) start = alignUp(start, boundary);
        const end = start + size; // exclusive, without guard
        if (end - 1n > hi) break;
        // Skip allocations that end at or before `start`.
        while (i < this.used.length && this.used[i]!.end <= start) i++;
        const next = this.used[i];
        if (next === undefined || end + this.granule <= next.start) {
          this.used.splice(i, 0, { start, end: end + this.granule, quarantined: false });
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
      `no free IOVA range of ${size} bytes (alignment 0x${alignment.toString(16)}${boundary > 0n ? `, boundary 0x${boundary.toString(16)}` : ''}) at or below 0x${limit.toString(16)} in ${this.space}`,
      'free DMA memory or unload maps, or use a tag with a wider addressLimit if the device can reach it',
    );
  }

  /** Called once the kernel dropped the range's mapping: it goes to quarantine. */
  release(start: bigint): void {
    const span = this.used[this.firstEndingAfter(start)];
    if (span === undefined || span.start !== start || span.quarantined) throw new UpciError('KERNEL', `IOVA 0x${start.toString(16)} is not allocated (double free in bus_dma)`);
    span.quarantined = true;
    if (this.quarantineLength === QUARANTINE_SPANS) this.evictOldest();
    this.quarantine[(this.quarantineHead + this.quarantineLength) % QUARANTINE_SPANS] = span;
    this.quarantineLength++;
  }

  /** The oldest quarantined range becomes free IOVA space again. */
  private evictOldest(): void {
    const oldest = this.quarantine[this.quarantineHead]!;
    this.quarantine[this.quarantineHead] = undefined;
    this.quarantineHead = (this.quarantineHead + 1) % QUARANTINE_SPANS;
    this.quarantineLength--;
    this.used.splice(this.firstEndingAfter(oldest.start), 1);
  }
}
