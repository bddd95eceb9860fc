/**
 * The DmaDomain of an IOMMU whose IOVAs the process picks (VFIO type1): the
 * process's own pages are pinned and mapped at IOVAs from this domain's
 * IovaAllocator, which never hands out IOVA 0, keeps a guard page after each
 * mapping and holds released IOVAs in quarantine (iova-allocator.ts). An
 * IOVA goes back to the allocator only once the kernel has dropped its
 * mapping (VFIO_IOMMU_UNMAP_DMA returns after the IOTLB flush).
 */
import { UpciError } from '../errors.js';
import type { DmaAccess, DmaBusSegment, DmaConstraints, DmaDomain, DmaMapping, ProcessPages } from '../port.js';
import { IovaAllocator, type IovaRange } from './iova-allocator.js';

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
  unmap(iova: bigint, size: number): void;
  /** Removes every mapping of the domain, whoever made it (VFIO_UNMAP_ALL). */
  unmapAll(): void;
}

/** The smallest page size in the IOMMU's bitmap, at least 4 KiB. */
export function iommuGranule(pageSizes: bigint): bigint {
  if (pageSizes === 0n) return 4096n;
  const lowest = pageSizes & -pageSizes;
  return lowest < 4096n ? 4096n : lowest;
}

const hex = (v: bigint) => `0x${v.toString(16)}`;

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

/** An IommuDmaDomain with its IOVA space managed here: what pci/bus-dma.ts gets as the device's DmaDomain. */
export class ManagedIommuDomain implements DmaDomain {
  /** The IOVA space; tests and benchmarks read its allocations and quarantine. */
  readonly iova: IovaAllocator;
  readonly pageSize: number;

  constructor(private readonly iommu: IommuDmaDomain) {
    this.iova = new IovaAllocator(iommu.iovaRanges, iommuGranule(iommu.pageSizes));
    this.pageSize = Number(this.iova.granule);
  }

  availableMappings(): number | undefined {
    return this.iommu.availableMappings();
  }

  /** No IOVA at or below the limit: IOVA 0's granule is never handed out, and each allocation needs a whole granule. */
  unreachable(addressLimit: bigint): string | undefined {
    const granule = this.iova.granule;
    const ranges = this.iommu.iovaRanges;
    if (ranges.some((r) => (r.start > granule ? r.start : granule) + granule - 1n <= (r.end < addressLimit ? r.end : addressLimit))) return undefined;
    return `a device limited to addresses <= ${hex(addressLimit)} can reach none of the IOMMU's valid IOVA ranges ${ranges.map((r) => `[${hex(r.start)}-${hex(r.end)}]`).join(' ')}`;
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
    const { iova } = mapping;
    this.iommu.unmap(iova, mapping.size);
    // Only once the kernel dropped the mapping may the IOVA be handed out again (after its quarantine).
    this.iova.release(iova);
  }

  /**
   * Every mapping goes, those of other threads' domains over the same
   * container too. This domain's own IOVAs stay allocated: whatever holds
   * them is being torn down with its thread.
   */
  unmapAll(): void {
    this.iommu.unmapAll();
  }
}
