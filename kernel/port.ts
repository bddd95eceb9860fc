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

export type DmaAccess = 'read' | 'write' | 'both';

/** What a device's DMA engine can reach, as a bus_dma tag states it (pci/dma-tag.ts DmaTag). */
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

/** Whole pages of this process's memory, to be made visible to a device. */
export interface ProcessPages {
  /** Page-aligned. */
  readonly address: bigint;
  /** A multiple of the domain's pageSize. */
  readonly size: number;
}

/**
 * Memory a device reaches until DmaDomain.unmap: the kernel-side mirror of
 * one bus_dma allocation or load.
 */
export interface DmaMapping {
  /** Bytes, a multiple of the domain's pageSize. */
  readonly size: number;
  /** Bus addresses of the whole mapping, in order, covering `size` bytes. */
  readonly segments: readonly DmaBusSegment[];
  /**
   * Where the process reaches the memory: the kernel's pages, to mmap, when
   * the kernel allocated them; undefined when they are the ProcessPages the
   * domain was given.
   */
  readonly mmap: MmapSource | undefined;
}

/**
 * How a device does DMA: the one model pci/bus-dma.ts works with, whichever
 * way the kernel does it.
 *  - VFIO (kernel/linux/iommu-dma.ts): the process's own pages are pinned
 *    and mapped in the IOMMU at IOVAs this domain picks, with a guard page
 *    after each and released IOVAs held in quarantine; allocate() maps the
 *    anonymous pages its caller provides.
 *  - NetBSD pciuser(4) (kernel/netbsd/pciuser.ts NetbsdDma): the kernel
 *    allocates the memory under the constraints and picks its bus addresses
 *    (through an IOMMU or not); allocate() returns the kernel's pages to
 *    mmap, and map() of process memory is refused.
 * Devices that share an IOMMU group share one domain; a thread that adopts
 * one of them (KernelPort.adopt) gets a window of it (reserveWindow).
 */
export interface DmaDomain {
  /** Granule of every mapping (the IOMMU's or bus_dma's page). */
  readonly pageSize: number;
  /** Mappings the kernel still allows, when it says (Linux: dma_entry_limit). */
  availableMappings(): number | undefined;
  /** Why a device that reaches only bus addresses <= addressLimit can be given none; undefined when it can be given some. */
  unreachable(addressLimit: bigint): string | undefined;
  /**
   * Zeroed DMA memory of `size` bytes (a multiple of pageSize), one
   * bus-contiguous range under `constraints`, that the device may access as
   * `access` says. `anonymous(size)` gives zeroed process pages: a domain
   * that maps process memory maps those (the result has no mmap); one whose
   * kernel allocates DMA memory never calls it.
   */
  allocate(size: number, constraints: DmaConstraints, access: DmaAccess, anonymous: (size: number) => ProcessPages): DmaMapping;
  /** Makes process pages visible to the device under `constraints`; a kernel that cannot refuses (UpciError 'KERNEL'). */
  map(pages: ProcessPages, constraints: DmaConstraints, access: DmaAccess): DmaMapping;
  /** bus_dmamap_sync (BUS_DMASYNC_* values) over [offset, offset+length) of a mapping. */
  sync(mapping: DmaMapping, ops: number, offset: number, length: number): void;
  /**
   * When this returns the device can no longer reach the mapping (the IOTLB
   * is flushed), and its bus addresses are not handed out again at once.
   */
  unmap(mapping: DmaMapping): void;
  /**
   * Sets part of the domain's bus address space aside for a domain another
   * thread adopts (KernelPort.adopt with DeviceHandles.dmaWindow): that
   * thread maps only inside the window, this one never does, so the two
   * never hand out the same address, and the window's mappings can be taken
   * back without touching anyone else's. A kernel that picks the bus
   * addresses itself refuses (UpciError 'KERNEL').
   */
  reserveWindow(): DmaWindow;
}

/** A range of bus addresses; `end` inclusive. */
export interface BusRange {
  readonly start: bigint;
  readonly end: bigint;
}

/** Bus address space a DmaDomain set aside (DmaDomain.reserveWindow). */
export interface DmaWindow {
  /** Plain data, for DeviceHandles.dmaWindow. */
  readonly ranges: readonly BusRange[];
  /**
   * Removes every mapping inside the window, whichever thread made it (how
   * the host takes DMA back from a driver thread it cannot ask); mappings
   * outside it stay. Returns the bytes removed.
   */
  unmap(): bigint;
  /**
   * Unmaps whatever is still mapped inside, then gives the window back to
   * its domain, whose usual quarantine of released bus addresses it goes
   * through. Only once no thread can map in it any more; idempotent.
   */
  release(): void;
}

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
   * (kernel/interrupt-watcher.ts) closes it once it stops polling it.
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
  /**
   * Registers one of the kernel's channels about the device (VFIO: an
   * eventfd on VFIO_PCI_REQ_IRQ_INDEX or VFIO_PCI_ERR_IRQ_INDEX): a
   * 'counter' source, owner 'hub', that the kernel signals for 'request'
   * when it wants the device back (an unbind of its kernel driver, a
   * hot-unplug; signalled again until close()), and for 'error' when the
   * PCIe link reports an uncorrectable error of the function (AER).
   * Undefined when the device or the port has no such channel. Absent on
   * ports without any.
   */
  enableChannel?(channel: KernelChannel): IrqSource | undefined;
  /**
   * The uncorrectable PCIe errors the kernel has counted for the function
   * since it appeared, by name and severity (Linux: sysfs aer_dev_fatal and
   * aer_dev_nonfatal); undefined when the kernel keeps no such count.
   */
  uncorrectableErrors?(): readonly PcieErrorCount[] | undefined;

  /** Closes every fd; idempotent. Mappings made through mmapSource must have been revoked first. */
  close(): void;

  /** The handles for KernelPort.adopt in another thread; absent when the port cannot share them. */
  readonly handles?: DeviceHandles;
}

/** A channel on which the kernel tells the holder of a device something: it wants it back, or it reported an uncorrectable PCIe error. */
export type KernelChannel = 'request' | 'error';

/** How often the kernel has seen one kind of uncorrectable PCIe error on a function (e.g. UnsupReq, nonfatal). */
export interface PcieErrorCount {
  readonly name: string;
  readonly severity: 'fatal' | 'nonfatal';
  readonly count: number;
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
  /**
   * The URL of a module whose default export is a KernelPort that adopts
   * these handles, for a port that is not the OS's own (pci/kernel-port.ts):
   * a thread imports it to take the device up. Absent: the thread's default
   * port (VFIO, pciuser(4)), which is every production port today.
   */
  readonly portModule?: string;
  /** The only bus addresses the adopting thread may map DMA at (DmaDomain.reserveWindow); set by whoever shares the device. */
  readonly dmaWindow?: readonly BusRange[];
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
