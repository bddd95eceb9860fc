/**
 * bus_dma(9) for userland drivers: DMA tags with the device's constraints,
 * DMA memory as SharedArrayBuffers, and maps whose segments are IOMMU
 * addresses (IOVAs). Every address handed to a device is the IOVA of a live
 * IOMMU mapping that satisfies the tag it was made under; a request that
 * cannot satisfy its tag is refused (DmaConstraintError), never truncated.
 *
 *   const dma = BusDma.forDevice(device);
 *   const tag = dma.createTag({ alignment: 4096, addressLimit: (1n << 28n) - 1n });
 *   const mem = tag.allocMemory(4096);            // bus_dmamem_alloc + map
 *   const loaded = tag.createMap(4096).load(mem); // bus_dmamap_create + load
 *   loaded.busAddress(0)                          // what the device is told
 *   dma.enableBusMaster();  ...
 *   loaded.sync(DmaSync.POSTREAD);
 *   loaded.unload(); mem.free();                  // legal while other DMA goes on
 *   const pool = tag.createPool({ entrySize: 4096, entries: 64 }); // many buffers, one mapping
 *
 * Lifetimes are explicit and per map, never tied to garbage collection or to
 * the device: the kernel's DMA mapping (VFIO_IOMMU_MAP_DMA, the pinned pages)
 * is the mirror of a DmaMemory, DmaPool or LoadedDmaMap and lives until
 * free()/unload() or until the device closes (a PciDevice release hook tears
 * down whatever is left, after bus mastering is off).
 *
 * Use-after-free rule: a driver unloads a map (or frees memory) once the
 * device has finished with it, while bus mastering stays on for the rest of
 * its DMA, as NetBSD drivers unload at completion. The device can never reach
 * the pages afterwards: the IOMMU mapping is removed (and the IOTLB flushed,
 * VFIO_IOMMU_UNMAP_DMA returns only then) before the pages are unpinned and
 * revoked, and the IOVA is quarantined (kernel/linux/iova-allocator.ts), so a device
 * that still holds the old address faults in the IOMMU instead of reaching a
 * buffer that got the address next. free() also revokes the buffer: views a
 * driver kept read all-ones and write into private memory, never into pages
 * a device can reach.
 *
 * One model for every kernel (kernel/port.ts DmaDomain): the port decides
 * where DMA memory's pages come from and which bus addresses they get
 * (VFIO: anonymous memory allocated here, mapped in the IOMMU at IOVAs the
 * port picks; NetBSD pciuser(4): the kernel's own pages, mmapped here), and
 * whether process memory can be loaded (VFIO: any page-aligned
 * SharedArrayBuffer; pciuser(4): refused, KERNEL). Above the port, memory
 * is one bus-contiguous range, and loads cut their segments out of it under
 * the tag.
 *
 * Files: this one keeps a device's bus_dma (BusDma, what the host tears
 * down; DriverDma, what a driver gets); dma-tag.ts the tags and their
 * constraint checks, dma-memory.ts DMA memory, dma-map.ts maps and loads,
 * dma-pool.ts pools; dma-owner.ts what they share, out of a driver's reach.
 *
 * No IOMMU: there is deliberately no "physical address" mode (handing real
 * physical addresses to a device without an IOMMU, as VFIO's no-IOMMU mode
 * or uio would allow). It is not implemented: a userland driver bug would be
 * a kernel-wide memory corruption. The VFIO port refuses devices without an
 * IOMMU group (NO_IOMMU_GROUP).
 */
import { released } from './dma-errors.js';
import type { DmaOwner, Holding } from './dma-owner.js';
import { DmaTag, type DmaTagOptions } from './dma-tag.js';
import type { PciDevice } from './device.js';
import { runEvery } from './teardown.js';

export { DmaConstraintError, type DmaConstraint } from './dma-errors.js';
export { DmaMap, DmaSync, LoadedDmaMap, type LoadOptions } from './dma-map.js';
export { DmaMemory, type AllocOptions } from './dma-memory.js';
export { DmaTag, type DmaSegment, type DmaTagOptions } from './dma-tag.js';

/** What bus_dma needs of a device (PciDevice provides it). */
export type DmaDevice = Pick<PciDevice, 'address' | 'kernel' | 'config' | 'onRelease' | 'isOpen' | 'busMasterEnabled' | 'enableBusMaster' | 'disableBusMaster'>;

/**
 * The bus_dma a driver gets (DriverBus.dma()): tags, and the device's bus
 * mastering. Nothing of the device, its config space or the kernel's DMA
 * domain is reachable from it, nor from the tags, memory and maps it makes.
 */
export interface DriverDma {
  createTag(options?: DmaTagOptions): DmaTag;
  /** IOMMU (or kernel allocation) page size: the granule of every mapping. */
  readonly granule: number;
  readonly busMasterEnabled: boolean;
  enableBusMaster(): void;
  disableBusMaster(): void;
}

/** The bus_dma state of one device: its tags' memory and maps, torn down at close. */
export class BusDma implements DriverDma {
  private static readonly instances = new WeakMap<object, BusDma>();

  /** What this device's tags, memory and maps share. */
  private readonly owner: DmaOwner;
  private closed = false;

  private constructor(private readonly device: DmaDevice) {
    this.owner = {
      address: device.address,
      domain: device.kernel.dma,
      live: () => this.live(),
      loads: new Set<Holding>(),
      memories: new Set<Holding>(),
    };
    device.onRelease(() => this.releaseAll(), 'dma');
  }

  /** The one BusDma of a device; registers its teardown with the device. */
  static forDevice(device: DmaDevice): BusDma {
    let dma = BusDma.instances.get(device);
    if (dma === undefined || dma.closed) {
      dma = new BusDma(device);
      BusDma.instances.set(device, dma);
    }
    return dma;
  }

  /** IOMMU (or kernel allocation) page size: the granule of every mapping. */
  get granule(): number {
    return this.owner.domain.pageSize;
  }

  createTag(options: DmaTagOptions = {}): DmaTag {
    this.live();
    return new DmaTag(this.owner, options);
  }

  /** Whether the device may master the bus (PCI_COMMAND bit 2). */
  get busMasterEnabled(): boolean {
    return this.device.busMasterEnabled;
  }

  /** Lets the device start DMA. Load its maps first: it can only reach what is mapped. */
  enableBusMaster(): void {
    this.live();
    this.device.enableBusMaster();
  }

  /** Stops all of the device's DMA (PCI_COMMAND bit 2 off). */
  disableBusMaster(): void {
    this.live();
    this.device.disableBusMaster();
  }

  /** Kernel DMA mappings this device's bus_dma holds now. */
  get mappingCount(): number {
    let n = 0;
    for (const h of this.holdings()) if (h.mappedBytes > 0) n++;
    return n;
  }

  /** Bytes the device can reach now: all DMA memory, and SharedArrayBuffers loaded into maps. */
  get bytesMapped(): number {
    let bytes = 0;
    for (const h of this.holdings()) bytes += h.mappedBytes;
    return bytes;
  }

  private *holdings(): Generator<Holding> {
    yield* this.owner.loads;
    yield* this.owner.memories;
  }

  private live(): void {
    if (this.closed || !this.device.isOpen) throw released(`${this.device.address} has been closed; its DMA memory and maps were released`);
  }

  /**
   * The release hook: bus mastering is already off (PciDevice.close), so
   * every map is unloaded and all memory freed without the BUSY check.
   */
  private releaseAll(): void {
    this.closed = true;
    this.teardownAll();
  }

  /**
   * Unloads every map and frees all memory of the device, as a driver's
   * detach does (the host's quiesce, with bus mastering already off).
   */
  releaseMappings(): void {
    this.live();
    this.teardownAll();
  }

  private teardownAll(): void {
    runEvery(`bus_dma teardown of ${this.device.address}`, [
      ...[...this.owner.loads].map((l) => () => l.teardown()),
      ...[...this.owner.memories].map((m) => () => m.teardown()),
    ]);
  }
}
