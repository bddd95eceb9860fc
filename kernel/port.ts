/**
 * The kernel port: what upci needs from the OS to drive one PCI function from
 * userland. Linux implements it with VFIO (kernel/linux/vfio.ts), NetBSD with
 * pci(4) extensions (kernel/netbsd/). Everything above kernel/ talks only to
 * these types.
 */
import type { PciAddress } from './pci-address.js';

export type RegionKind = 'bar' | 'rom' | 'config' | 'vga';

export interface MmapArea {
  /** Offset within the region. */
  readonly offset: number;
  readonly size: number;
}

export interface RegionInfo {
  /** Kernel region index: BARs are 0-5, then ROM, config space, VGA. */
  readonly index: number;
  readonly kind: RegionKind;
  readonly size: number;
  readonly readable: boolean;
  readonly writable: boolean;
  /** The parts of the region that may be mmapped; empty when none may be. */
  readonly mmapAreas: readonly MmapArea[];
}

/** What shm/ needs to mmap part of a region. */
export interface MmapSource {
  readonly fd: number;
  /** Offset to pass to mmap(2). */
  readonly fileOffset: number;
  readonly size: number;
  readonly writable: boolean;
}

export type IrqKind = 'intx' | 'msi' | 'msix';

export interface IrqInfo {
  readonly kind: IrqKind;
  /** Vectors the device offers of this kind; 0 when it has none. */
  readonly count: number;
  /** INTx: the kernel masks the line when it fires until unmaskIntx(). */
  readonly automasked: boolean;
  readonly maskable: boolean;
}

export interface IovaRange {
  readonly start: bigint;
  /** Inclusive. */
  readonly end: bigint;
}

export type DmaAccess = 'read' | 'write' | 'both';

/**
 * DMA model 'iommu' (VFIO): the process allocates the memory and chooses the
 * IOVA; the kernel pins it and programs the IOMMU. Devices that share an
 * IOMMU group share one domain; every mapping made here is the kernel-side
 * mirror of a userland DMA allocation. pci/bus-dma.ts keeps the IOVA space
 * (pci/iova-allocator.ts) and can also load memory it did not allocate.
 * `model` may be left out: an object without it is this model.
 */
export interface IommuDmaDomain {
  readonly model?: 'iommu';
  readonly iovaRanges: readonly IovaRange[];
  /** Bitmap of supported IOMMU page sizes. */
  readonly pageSizes: bigint;
  /** Mappings the kernel still allows, when it says (Linux: dma_entry_limit). */
  availableMappings(): number | undefined;
  /** Pins [vaddr, vaddr+size) and makes it visible to the device at iova. */
  map(vaddr: bigint, iova: bigint, size: number, access: DmaAccess): void;
  unmap(iova: bigint, size: number): void;
  /**
   * Removes every mapping of the domain, whoever made it (any thread of the
   * process): how the host takes DMA back from a driver thread it cannot
   * ask. Devices sharing the domain lose theirs too.
   */
  unmapAll(): void;
}

/** What a device's DMA engine can reach, as a bus_dma tag states it (pci/bus-dma.ts DmaTag). */
export interface DmaConstraints {
  /** Power of two; the memory's first bus address is a multiple of it. */
  readonly alignment: bigint;
  /** 0 or a power of two no segment may cross. */
  readonly boundary: bigint;
  /** Highest bus address the device can reach, inclusive. */
  readonly addressLimit: bigint;
  /** Most segments the memory may be in. */
  readonly maxSegments: number;
}

export interface DmaBusSegment {
  readonly busAddress: bigint;
  readonly length: number;
}

/** Memory the kernel allocated for DMA: mmap `mmap` to reach it; the device reaches it at `segments`. */
export interface DmaAllocation {
  /** Bytes, a multiple of the page. */
  readonly size: number;
  readonly mmap: MmapSource;
  /** Bus addresses of the whole allocation, in order, covering `size` bytes. */
  readonly segments: readonly DmaBusSegment[];
}

/**
 * DMA model 'kernel' (NetBSD pciuser(4), bus_dma(9) in the kernel): the
 * kernel allocates the memory on the device's DMA tag and chooses its bus
 * addresses (through an IOMMU or not); the process can neither choose
 * addresses nor make its own memory visible to the device.
 */
export interface KernelDmaAllocator {
  readonly model: 'kernel';
  /** Allocation granularity. */
  readonly pageSize: number;
  /** Allocations the kernel still allows, when it says. */
  availableMappings(): number | undefined;
  /** Zeroed memory of `size` bytes (a multiple of pageSize) the device may access as `access` says, loaded for DMA. */
  allocate(size: number, constraints: DmaConstraints, access: DmaAccess): DmaAllocation;
  /** bus_dmamap_sync (BUS_DMASYNC_* values) over [offset, offset+length) of an allocation. */
  sync(allocation: DmaAllocation, ops: number, offset: number, length: number): void;
  /** The device can no longer reach it; the pages go once the last mapping of them goes. */
  free(allocation: DmaAllocation): void;
}

/** How a device does DMA: pci/bus-dma.ts serves both models behind one API, choosing by `model`. */
export type DmaDomain = IommuDmaDomain | KernelDmaAllocator;

/**
 * Where a device's interrupts can be read: plain data, so that the thread
 * that handles them can be another than the one that enabled them.
 *  - 'counter': read(2) gives an 8-byte count (an eventfd): interrupts on
 *    vector `firstVector` since the last read; `vectors` is 1.
 *  - 'records': read(2) gives 8-byte records {u32 vector, u32 count}
 *    (little-endian), `vector` in [firstVector, firstVector + vectors);
 *    read until the fd has nothing (EAGAIN) or is at end of file.
 */
export interface IrqSource {
  /** Non-blocking, pollable. */
  readonly fd: number;
  readonly format: 'counter' | 'records';
  readonly firstVector: number;
  readonly vectors: number;
  /**
   * Who closes `fd`. 'hub': handed over with the source: the receiver
   * (workers/interrupt-watcher.ts) closes it once it stops polling it.
   * 'device': the DeviceFile's own fd, closed by DeviceFile.close() only;
   * the watcher must have let go of it first.
   */
  readonly owner: 'hub' | 'device';
}

export interface DeviceFile {
  readonly address: PciAddress;
  /** Indexed by region index; absent indexes have size 0. */
  readonly regions: readonly RegionInfo[];
  readonly irqs: Readonly<Record<IrqKind, IrqInfo>>;
  readonly canReset: boolean;
  readonly dma: DmaDomain;

  region(index: number): RegionInfo;
  /** mmap source for one mmappable area of a region. */
  mmapSource(index: number, area: MmapArea): MmapSource;
  /** Non-mmapped access (I/O ports, config space, trapped MMIO): exactly buf.length bytes at offset. */
  readRegion(index: number, offset: number, buf: Buffer): void;
  writeRegion(index: number, offset: number, buf: Buffer): void;
  /** Function-level (or the best available) reset. */
  reset(): void;

  /**
   * Enables vectors 0..count-1 of `kind`, replacing any previous setup, and
   * says where their interrupts can be read: sources that together cover
   * each vector once. All or nothing: fewer vectors than asked is an error.
   */
  enableIrqs(kind: IrqKind, count: number): IrqSource[];
  disableIrqs(kind: IrqKind): void;
  unmaskIntx(): void;

  /** Closes every fd; idempotent. Mappings made through mmapSource must have been revoked first. */
  close(): void;

  /** The handles for KernelPort.adopt in another thread; absent when the port cannot share them. */
  readonly handles?: DeviceHandles;
}

/**
 * An open device as plain data (fd numbers, valid in every thread of the
 * process), so that a driver's worker thread can reach the same kernel
 * handles the main thread holds: KernelPort.adopt turns it back into a
 * DeviceFile.
 */
export interface DeviceHandles {
  readonly port: string;
  readonly address: PciAddress;
  readonly fds: Readonly<Record<string, number>>;
  readonly group?: number;
}

export interface KernelPort {
  readonly name: string;
  open(address: PciAddress): DeviceFile;
  /**
   * A DeviceFile over the handles another thread opened (DeviceFile.handles):
   * it makes the same calls on the same fds, and its close() closes none of
   * them (their opener does). Ports that cannot share a device across
   * threads leave it out.
   */
  adopt?(handles: DeviceHandles): DeviceFile;
}
