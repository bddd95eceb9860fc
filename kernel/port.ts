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
 * The IOMMU context a device's DMA goes through. Devices that share an IOMMU
 * group share one; every mapping made here is the kernel-side mirror of a
 * userland DMA allocation.
 */
export interface DmaDomain {
  readonly iovaRanges: readonly IovaRange[];
  /** Bitmap of supported IOMMU page sizes. */
  readonly pageSizes: bigint;
  /** Mappings the kernel still allows, when it says (Linux: dma_entry_limit). */
  availableMappings(): number | undefined;
  /** Pins [vaddr, vaddr+size) and makes it visible to the device at iova. */
  map(vaddr: bigint, iova: bigint, size: number, access: DmaAccess): void;
  unmap(iova: bigint, size: number): void;
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

  /** Routes `count` vectors of `kind` to eventfds (one per vector, starting at 0); replaces any previous setup. */
  enableIrqs(kind: IrqKind, eventfds: readonly number[]): void;
  disableIrqs(kind: IrqKind): void;
  unmaskIntx(): void;

  /** Closes every fd; idempotent. Mappings made through mmapSource must have been revoked first. */
  close(): void;
}

export interface KernelPort {
  readonly name: string;
  open(address: PciAddress): DeviceFile;
}
