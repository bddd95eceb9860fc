/**
 * The DmaDomain of an IOMMU whose IOVAs the process picks (VFIO type1): the
 * process's own pages are pinned and mapped at IOVAs from this domain's
 * IovaAllocator, which never hands out IOVA 0, keeps a guard page after each
 * mapping and holds released IOVAs in quarantine (iova-allocator.ts). An
 * IOVA goes back to the allocator only once the kernel has dropped its
 * mapping (VFIO_IOMMU_UNMAP_DMA returns after the IOTLB flush).
 *
 * One VFIO container is one IOVA space for every thread of the process, but
 * an allocator is a JavaScript object each thread has its own of. So the
 * thread that opened the container owns the whole space, and each driver
 * thread that adopts a device of it gets a window reserved from that space
 * (reserveWindow, passed in DeviceHandles.dmaWindow), inside which alone its
 * own allocator hands out IOVAs. Windows, not one allocator in shared memory
 * under an Atomics lock, because:
 *  - a driver thread is terminated wherever it is, inside an allocator's
 *    critical section too, which would leave the lock held and the shared
 *    state half-updated; with windows nothing a driver thread does touches
 *    the opener's allocator;
 *  - taking DMA back from a thread needs no record of what it mapped: one
 *    VFIO_IOMMU_UNMAP_DMA per window part removes exactly its mappings, and
 *    since its allocator never crosses the window's ends the range never
 *    bisects a mapping (which type1v2 refuses with EINVAL). Run again once
 *    the thread is gone it also catches a map made during the take-back;
 *  - the per-request map path takes no lock in any thread.
 * The cost: each incarnation holds a fixed share of the space (WINDOW_PARTS)
 * whether it maps little or much.
 */
import { UpciError } from '../errors.js';
import type { DmaAccess, DmaBusSegment, DmaConstraints, DmaDomain, DmaMapping, DmaWindow, ProcessPages } from '../port.js';
import { describeRanges, IovaAllocator, type IovaRange } from './iova-allocator.js';

/**
 * The kernel's half: one IOMMU domain (a VFIO container), where the process
 * chooses the IOVA and the kernel pins the pages and programs the IOMMU.
 */
export interface IommuDmaDomain {
  readonly iovaRanges: readonly IovaRange[];
  /** Bitmap of supported IOMMU page sizes. */
  readonly pageSizes: bigint;
  /** Mappings the kernel still allows, when it says (Linux: dma_entry_limit). */
  availableMappings(): number | undefined;
  /** Pins [vaddr, vaddr+size) and makes it visible to the device at iova. */
  map(vaddr: bigint, iova: bigint, size: number, access: DmaAccess): void;
  /**
   * Removes every mapping wholly inside [iova, iova+size) and returns the
   * bytes removed; a mapping the range would cut in two is an error (type1v2:
   * EINVAL), a range with nothing mapped removes nothing.
   */
  unmap(iova: bigint, size: bigint): bigint;
}

/** The smallest page size in the IOMMU's bitmap, at least 4 KiB. */
export function iommuGranule(pageSizes: bigint): bigint {
  if (pageSizes === 0n) return 4096n;
  const lowest = pageSizes & -pageSizes;
  return lowest < 4096n ? 4096n : lowest;
}

const hex = (v: bigint) => `0x${v.toString(16)}`;

/**
 * The parts of every window (reserveWindow), each naturally aligned. Who
 * will drive the device, and how far its DMA reaches, is known only once
 * its driver attaches in the thread, so each window has a small part low
 * in the space, below 2^28 for the narrowest DMA masks PCI devices have
 * (QEMU's edu: 28 bits), and a large one for everything else, whose
 * alignment puts it at or above 4 GiB (IOVA 0 is never handed out). A
 * window is one device's: a 64-bit device filling its low part takes
 * nothing from another.
 */
export const WINDOW_PARTS: readonly { readonly size: bigint; readonly limit: bigint }[] = [
  { size: 4n << 20n, limit: (1n << 28n) - 1n },
  { size: 4n << 30n, limit: (1n << 64n) - 1n },
];

/** Process pages mapped at one IOVA range. */
class IommuMapping implements DmaMapping {
  readonly segments: readonly DmaBusSegment[];
  readonly mmap = undefined;

  constructor(
    readonly iova: bigint,
    readonly size: number,
  ) {
    this.segments = [{ busAddress: iova, length: size }];
  }
}

/** IOVA space set aside in a ManagedIommuDomain for another thread's (DmaDomain.reserveWindow). */
class IommuWindow implements DmaWindow {
  private released = false;

  constructor(
    private readonly iommu: IommuDmaDomain,
    private readonly space: IovaAllocator,
    readonly ranges: readonly IovaRange[],
  ) {}

  unmap(): bigint {
    let removed = 0n;
    for (const { start, end } of this.ranges) removed += this.iommu.unmap(start, end + 1n - start);
    return removed;
  }

  /** A window whose unmap failed stays reserved: what is still mapped in it must not be handed out again. */
  release(): void {
    if (this.released) return;
    this.unmap();
    this.released = true;
    for (const { start } of this.ranges) this.space.release(start);
  }
}

/** An IommuDmaDomain with its IOVA space managed here: what pci/bus-dma.ts gets as the device's DmaDomain. */
export class ManagedIommuDomain implements DmaDomain {
  /** The IOVA space; tests and benchmarks read its allocations and quarantine. */
  readonly iova: IovaAllocator;
  readonly pageSize: number;

  /** `window`: the only IOVAs this domain may map at (another thread's reserveWindow); the IOMMU's whole space without it. */
  constructor(
    private readonly iommu: IommuDmaDomain,
    window?: readonly IovaRange[],
  ) {
    const granule = iommuGranule(iommu.pageSizes);
    if (window !== undefined) {
      const stray = window.find((w) => w.start % granule !== 0n || (w.end + 1n) % granule !== 0n || !iommu.iovaRanges.some((r) => r.start <= w.start && w.end <= r.end));
      if (stray !== undefined || window.length === 0) {
        throw new UpciError('KERNEL', `DMA window ${describeRanges(window)} is empty, not in whole ${granule}-byte IOMMU pages, or outside the IOMMU's valid IOVA ranges ${describeRanges(iommu.iovaRanges)}`);
      }
    }
    this.iova = window === undefined ? new IovaAllocator(iommu.iovaRanges, granule) : new IovaAllocator(window, granule, `this thread's DMA window ${describeRanges(window)}`);
    this.pageSize = Number(granule);
  }

  availableMappings(): number | undefined {
    return this.iommu.availableMappings();
  }

  /** No IOVA at or below the limit: IOVA 0's granule is never handed out, and each allocation needs a whole granule. */
  unreachable(addressLimit: bigint): string | undefined {
    const granule = this.iova.granule;
    if (this.iova.ranges.some((r) => (r.start > granule ? r.start : granule) + granule - 1n <= (r.end < addressLimit ? r.end : addressLimit))) return undefined;
    return `a device limited to addresses <= ${hex(addressLimit)} can reach none of ${this.iova.space}`;
  }

  allocate(size: number, constraints: DmaConstraints, access: DmaAccess, anonymous: (size: number) => ProcessPages): DmaMapping {
    return this.map(anonymous(size), constraints, access);
  }

  map(pages: ProcessPages, constraints: DmaConstraints, access: DmaAccess): DmaMapping {
    const { size } = pages;
    const iova = this.iova.allocate({ size: BigInt(size), alignment: constraints.alignment, limit: constraints.addressLimit, boundary: constraints.boundary });
    try {
      this.iommu.map(pages.address, iova, size, access);
    } catch (e) {
      this.iova.release(iova);
      throw e;
    }
    return new IommuMapping(iova, size);
  }

  /** Nothing to do: VFIO requires an IOMMU that keeps DMA cache-coherent (pci/dma-map.ts LoadedDmaMap.sync). */
  sync(): void {}

  unmap(mapping: DmaMapping): void {
    if (!(mapping instanceof IommuMapping)) throw new UpciError('KERNEL', 'bus_dma: unmap of a mapping this IOMMU domain did not make');
    const { iova, size } = mapping;
    const removed = this.iommu.unmap(iova, BigInt(size));
    if (removed !== BigInt(size)) throw new UpciError('KERNEL', `VFIO_IOMMU_UNMAP_DMA at ${hex(iova)} removed ${removed} bytes, expected ${size}`);
    // Only once the kernel dropped the mapping may the IOVA be handed out again (after its quarantine).
    this.iova.release(iova);
  }

  /** WINDOW_PARTS from this domain's space, as allocations of its own: nothing here maps inside them. */
  reserveWindow(): DmaWindow {
    const ranges: IovaRange[] = [];
    try {
      for (const { size, limit } of WINDOW_PARTS) {
        const start = this.iova.allocate({ size, alignment: size, limit, boundary: 0n });
        ranges.push({ start, end: start + size - 1n });
      }
    } catch (e) {
      for (const { start } of ranges) this.iova.release(start);
      throw new UpciError(
        'OUT_OF_RANGE',
        `no room for a driver thread's DMA window (${WINDOW_PARTS.map((p) => `${p.size} bytes below ${hex(p.limit + 1n)}`).join(', ')}): ${e instanceof Error ? e.message : String(e)}`,
        'stop other driver threads on this IOMMU group, or run the driver in the main thread (its module\'s thread: \'main\')',
        { cause: e },
      );
    }
    return new IommuWindow(this.iommu, this.iova, ranges);
  }
}
