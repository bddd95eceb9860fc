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
 * revoked, and the IOVA is quarantined (pci/iova-allocator.ts), so a device
 * that still holds the old address faults in the IOMMU instead of reaching a
 * buffer that got the address next. free() also revokes the buffer: views a
 * driver kept read all-ones and write into private memory, never into pages
 * a device can reach.
 *
 * Two kernel models (kernel/port.ts DmaDomain, chosen by its `model`):
 *  - 'iommu' (VFIO): memory is allocShared() here, its IOVA comes from this
 *    domain's IovaAllocator and the kernel maps it (domain.map); any
 *    page-aligned SharedArrayBuffer can be loaded the same way.
 *  - 'kernel' (NetBSD pciuser(4)): the kernel allocates the memory under the
 *    tag's constraints and returns its bus addresses (domain.allocate); it is
 *    mmapped here. Only such memory can be loaded: a SharedArrayBuffer the
 *    process allocated cannot be made visible to the device (refused, KERNEL).
 * Above allocation the two are one code path: memory is one bus-contiguous
 * range, and loads cut their segments out of it under the tag.
 *
 * No IOMMU: there is deliberately no "physical address" mode (handing real
 * physical addresses to a device without an IOMMU, as VFIO's no-IOMMU mode
 * or uio would allow). It is not implemented: a userland driver bug would be
 * a kernel-wide memory corruption. The VFIO port refuses devices without an
 * IOMMU group (NO_IOMMU_GROUP).
 */
import { UpciError } from '../kernel/errors.js';
import type { DmaAccess, DmaAllocation, DmaDomain, IommuDmaDomain, KernelDmaAllocator } from '../kernel/port.js';
import { addressOf, allocShared, mapShared, revoke } from '../shm/mapping.js';
import type { PciDevice } from './device.js';
import { DmaPool, type DmaPoolOptions } from './dma-pool.js';
import { allocatorFor, type IovaAllocator } from './iova-allocator.js';
import { runEvery } from './teardown.js';

/** What bus_dma needs of a device (PciDevice provides it). */
export type DmaDevice = Pick<PciDevice, 'address' | 'kernel' | 'config' | 'onRelease' | 'isOpen' | 'busMasterEnabled' | 'enableBusMaster' | 'disableBusMaster'>;

export type DmaConstraint = 'alignment' | 'boundary' | 'maxSegmentSize' | 'maxSegments' | 'addressLimit' | 'maxSize' | 'pageAlignment' | 'range';

/**
 * A request that cannot satisfy a tag's constraints (or a bad tag). Code
 * OUT_OF_RANGE; `constraint` says which rule it broke.
 */
export class DmaConstraintError extends UpciError {
  constructor(
    readonly constraint: DmaConstraint,
    message: string,
    fix?: string,
  ) {
    super('OUT_OF_RANGE', `bus_dma: ${message}`, fix);
  }
}

export interface DmaTagOptions {
  /** Power of two: every segment's bus address is a multiple of it. Default 1. */
  readonly alignment?: number;
  /** 0 (none) or a power of two >= alignment: no segment crosses a multiple of it. Default 0. */
  readonly boundary?: number | bigint;
  /** Largest segment in bytes (rounded down to a multiple of alignment when splitting). Default: unlimited. */
  readonly maxSegmentSize?: number;
  /** Most segments one load may produce. Default: unlimited. */
  readonly maxSegments?: number;
  /** Highest bus address the device can reach, inclusive: e.g. (1n << 28n) - 1n. Default 2^64 - 1. */
  readonly addressLimit?: number | bigint;
  /** Largest total a map of this tag may load. Default: unlimited. */
  readonly maxSize?: number;
}

export interface DmaSegment {
  readonly busAddress: bigint;
  readonly length: number;
}

/** bus_dmamap_sync operations (NetBSD's BUS_DMASYNC_* values); OR them together. */
export const DmaSync = {
  /** Before the device writes the memory (a device → RAM transfer). */
  PREREAD: 0x01,
  /** After the device wrote it, before the CPU reads. */
  POSTREAD: 0x02,
  /** After the CPU wrote the memory, before the device reads it (RAM → device). */
  PREWRITE: 0x04,
  /** After the device read it. */
  POSTWRITE: 0x08,
} as const;

export interface AllocOptions {
  /** What the device may do to the memory (IOMMU permissions). Default 'both'. */
  readonly access?: DmaAccess;
}

export interface LoadOptions {
  /** For a SharedArrayBuffer source: IOMMU permissions of its mapping. Default 'both'. */
  readonly access?: DmaAccess;
}

/**
 * The bus_dma a driver gets (DriverBus.dma()): tags, and the device's bus
 * mastering. Nothing of the device, its config space or the kernel's DMA
 * domain is reachable from it.
 */
export interface DriverDma {
  createTag(options?: DmaTagOptions): DmaTag;
  /** IOMMU (or kernel allocation) page size: the granule of every mapping. */
  readonly granule: number;
  readonly busMasterEnabled: boolean;
  enableBusMaster(): void;
  disableBusMaster(): void;
}

const MAX_U64 = (1n << 64n) - 1n;
const MAX_NUMBER_ADDRESS = 1n << 53n;
const isPow2 = (v: bigint) => v > 0n && (v & (v - 1n)) === 0n;
const hex = (v: bigint | number) => `0x${v.toString(16)}`;

/** A full fence: a sequentially consistent read-modify-write (a locked instruction on x86). */
const fenceCell = new Int32Array(new SharedArrayBuffer(4));

function released(what: string): UpciError {
  return new UpciError('RELEASED', `bus_dma: ${what}`);
}

/** The bus_dma state of one device: its tags' memory and maps, torn down at close. */
export class BusDma implements DriverDma {
  private static readonly instances = new WeakMap<object, BusDma>();

  private readonly domain: DmaDomain;
  private readonly iovaSpace: IovaAllocator | undefined;
  /** @internal */
  readonly memories = new Set<DmaMemory>();
  /** @internal */
  readonly loads = new Set<LoadedDmaMap>();
  private closed = false;

  private constructor(private readonly device: DmaDevice) {
    this.domain = device.kernel.dma;
    this.iovaSpace = this.domain.model === 'kernel' ? undefined : allocatorFor(this.domain);
    device.onRelease(() => this.releaseAll());
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

  /** @internal For error messages. */
  get address(): string {
    return this.device.address;
  }

  /** The IOVA space ('iommu' model); the 'kernel' model has none the process could allocate from. */
  get iova(): IovaAllocator {
    if (this.iovaSpace === undefined) {
      throw new UpciError('KERNEL', `bus_dma: ${this.address}'s kernel port allocates DMA memory and picks its bus addresses itself; there is no IOVA space in this process`);
    }
    return this.iovaSpace;
  }

  /** @internal The 'iommu' domain, or undefined under the 'kernel' model. */
  get iommu(): IommuDmaDomain | undefined {
    return this.domain.model === 'kernel' ? undefined : this.domain;
  }

  /** @internal The 'kernel' allocator, or undefined under the 'iommu' model. */
  get allocator(): KernelDmaAllocator | undefined {
    return this.domain.model === 'kernel' ? this.domain : undefined;
  }

  /** IOMMU (or kernel allocation) page size: the granule of every mapping. */
  get granule(): number {
    return this.domain.model === 'kernel' ? this.domain.pageSize : Number(this.iova.granule);
  }

  createTag(options: DmaTagOptions = {}): DmaTag {
    this.live();
    return new DmaTag(this, options);
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
    let n = this.memories.size;
    for (const l of this.loads) if (l.ownsMapping) n++;
    return n;
  }

  /** @internal */
  live(): void {
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

  /** Bytes the device can reach now: all DMA memory, and SharedArrayBuffers loaded into maps. */
  get bytesMapped(): number {
    let bytes = 0;
    for (const m of this.memories) bytes += m.size;
    for (const l of this.loads) if (l.ownsMapping) bytes += l.length;
    return bytes;
  }

  private teardownAll(): void {
    runEvery(`bus_dma teardown of ${this.device.address}`, [
      ...[...this.loads].map((l) => () => l.teardown()),
      ...[...this.memories].map((m) => () => m.teardown()),
    ]);
  }
}

/** bus_dma_tag_t: the constraints of a device's DMA engine. */
export class DmaTag {
  readonly alignment: bigint;
  readonly boundary: bigint;
  readonly maxSegmentSize: bigint;
  readonly maxSegments: number;
  readonly addressLimit: bigint;
  readonly maxSize: number;
  /** Step used to split long segments: maxSegmentSize rounded down to alignment. */
  private readonly splitSize: bigint;

  /** @internal use BusDma.createTag */
  constructor(
    readonly dma: BusDma,
    options: DmaTagOptions,
  ) {
    const alignment = BigInt(options.alignment ?? 1);
    const boundary = BigInt(options.boundary ?? 0);
    const maxSegmentSize = options.maxSegmentSize === undefined ? MAX_U64 : BigInt(options.maxSegmentSize);
    const maxSegments = options.maxSegments ?? Number.POSITIVE_INFINITY;
    const addressLimit = options.addressLimit === undefined ? MAX_U64 : BigInt(options.addressLimit);
    const maxSize = options.maxSize ?? Number.MAX_SAFE_INTEGER;
    if (!isPow2(alignment)) throw new DmaConstraintError('alignment', `alignment ${alignment} is not a power of two`);
    if (boundary !== 0n && (!isPow2(boundary) || boundary < alignment)) {
      throw new DmaConstraintError('boundary', `boundary ${hex(boundary)} is not 0 or a power of two >= the alignment (${alignment})`);
    }
    if (maxSegmentSize < alignment) throw new DmaConstraintError('maxSegmentSize', `maxSegmentSize ${maxSegmentSize} is below the alignment ${alignment}`);
    if (!(maxSegments >= 1) || (Number.isFinite(maxSegments) && !Number.isInteger(maxSegments))) {
      throw new DmaConstraintError('maxSegments', `maxSegments ${maxSegments} is not a positive integer`);
    }
    if (!(Number.isSafeInteger(maxSize) && maxSize > 0)) throw new DmaConstraintError('maxSize', `maxSize ${maxSize} is not a positive integer`);
    if (addressLimit < 0n || addressLimit > MAX_U64) throw new DmaConstraintError('addressLimit', `addressLimit ${hex(addressLimit)} is not a 64-bit address`);
    // Under the 'kernel' model the kernel checks the window at allocation time.
    const iommu = dma.iommu;
    if (iommu !== undefined) {
      const granule = dma.iova.granule;
      const reachable = iommu.iovaRanges.some((r) => (r.start > granule ? r.start : granule) + granule - 1n <= (r.end < addressLimit ? r.end : addressLimit));
      if (!reachable) {
        throw new DmaConstraintError(
          'addressLimit',
          `a device limited to addresses <= ${hex(addressLimit)} can reach none of the IOMMU's valid IOVA ranges ${iommu.iovaRanges.map((r) => `[${hex(r.start)}-${hex(r.end)}]`).join(' ')}`,
        );
      }
    }
    this.alignment = alignment;
    this.boundary = boundary;
    this.maxSegmentSize = maxSegmentSize;
    this.maxSegments = maxSegments;
    this.addressLimit = addressLimit;
    this.maxSize = maxSize;
    this.splitSize = (maxSegmentSize / alignment) * alignment;
  }

  /** A child tag: the stricter of this tag's constraints and `options` (bus_dma_tag_create with a parent). */
  derive(options: DmaTagOptions): DmaTag {
    const max = (a: bigint, b: number | bigint | undefined) => (b === undefined || a > BigInt(b) ? a : BigInt(b));
    const min = (a: bigint, b: number | bigint | undefined) => (b === undefined || a < BigInt(b) ? a : BigInt(b));
    const boundary = options.boundary === undefined || BigInt(options.boundary) === 0n
      ? this.boundary
      : this.boundary === 0n ? BigInt(options.boundary) : min(this.boundary, options.boundary);
    return this.dma.createTag({
      alignment: Number(max(this.alignment, options.alignment)),
      boundary,
      maxSegmentSize: Number(min(this.maxSegmentSize, options.maxSegmentSize)),
      maxSegments: Math.min(this.maxSegments, options.maxSegments ?? Number.POSITIVE_INFINITY),
      addressLimit: min(this.addressLimit, options.addressLimit),
      maxSize: Math.min(this.maxSize, options.maxSize ?? Number.MAX_SAFE_INTEGER),
    });
  }

  /**
   * bus_dmamem_alloc + bus_dmamem_map: `size` bytes (rounded up to the IOMMU
   * page) of zeroed, page-aligned shared memory, reachable by the device at
   * one bus-contiguous range that satisfies this tag: pinned and mapped in
   * the IOMMU at an IOVA chosen here ('iommu'), or allocated so by the
   * kernel ('kernel').
   */
  allocMemory(size: number, options: AllocOptions = {}): DmaMemory {
    this.dma.live();
    this.checkSize(size);
    const granule = BigInt(this.dma.granule);
    const span = ((BigInt(size) + granule - 1n) / granule) * granule;
    // The whole memory must be loadable in one go under this tag.
    this.countSegments(0n, span);
    const access = options.access ?? 'both';
    // As the IOVA allocator does: a range no longer than the boundary must not cross one; a longer one is split at loads.
    const boundary = this.boundary > 0n && span <= this.boundary ? this.boundary : 0n;
    const allocator = this.dma.allocator;
    let mem: DmaMemory;
    if (allocator !== undefined) {
      const allocation = allocator.allocate(Number(span), { alignment: this.alignment, boundary, addressLimit: this.addressLimit, maxSegments: 1 }, access);
      let buffer: SharedArrayBuffer | undefined;
      try {
        const [segment, ...more] = allocation.segments;
        if (segment === undefined || more.length > 0 || segment.length < Number(span) || allocation.size < Number(span)) {
          throw new UpciError('KERNEL', `bus_dma: the kernel returned ${allocation.segments.length} segment(s) for ${span} bytes asked for as one`);
        }
        // Checks the kernel's addresses against the tag, as for any load.
        this.segments(segment.busAddress, Number(span));
        buffer = mapShared(allocation.mmap);
      } catch (e) {
        allocator.free(allocation);
        throw e;
      }
      mem = new DmaMemory(this, buffer, Number(span), allocation.segments[0]!.busAddress, allocation);
    } else {
      const iova = this.dma.iova.allocate({ size: span, alignment: this.alignment, limit: this.addressLimit, boundary: this.boundary });
      let buffer: SharedArrayBuffer | undefined;
      try {
        buffer = allocShared(Number(span));
        this.dma.iommu!.map(addressOf(buffer), iova, Number(span), access);
      } catch (e) {
        this.dma.iova.release(iova);
        if (buffer !== undefined) revoke(buffer);
        throw e;
      }
      mem = new DmaMemory(this, buffer, Number(span), iova, undefined);
    }
    this.dma.memories.add(mem);
    memoryOfBuffer.set(mem.buffer, mem);
    return mem;
  }

  /**
   * A pool of `entries` fixed-size buffers in one allocation, loaded once,
   * with each entry's bus address precomputed (ixy's mempool): no system
   * call, BigInt or object per I/O. Each entry is one segment under this tag.
   */
  createPool(options: DmaPoolOptions): DmaPool {
    return new DmaPool(this, options);
  }

  /** bus_dmamap_create: a map that can load up to `maxSize` bytes at a time. */
  createMap(maxSize: number = this.maxSize): DmaMap {
    this.dma.live();
    this.checkSize(maxSize);
    return new DmaMap(this, maxSize);
  }

  private checkSize(size: number): void {
    if (!(Number.isSafeInteger(size) && size > 0)) throw new DmaConstraintError('range', `size ${size} is not a positive integer`);
    if (size > this.maxSize) throw new DmaConstraintError('maxSize', `${size} bytes exceed the tag's maxSize of ${this.maxSize}`);
  }

  /** @internal Throws unless [start, start+length) can be cut into segments under this tag; returns how many. */
  countSegments(start: bigint, length: bigint): number {
    let n = 0;
    let at = start;
    const end = start + length;
    while (at < end) {
      at = this.segmentEnd(at, end);
      n++;
    }
    if (n > this.maxSegments) {
      throw new DmaConstraintError(
        'maxSegments',
        `${length} bytes need ${n} segments under this tag (maxSegmentSize ${this.maxSegmentSize === MAX_U64 ? 'unlimited' : this.maxSegmentSize}, boundary ${hex(this.boundary)}) but maxSegments is ${this.maxSegments}`,
        'load less at a time, or use a tag that allows more or longer segments',
      );
    }
    return n;
  }

  private segmentEnd(at: bigint, end: bigint): bigint {
    let next = at + this.splitSize < end ? at + this.splitSize : end;
    if (this.boundary !== 0n) {
      const b = (at / this.boundary + 1n) * this.boundary;
      if (b < next) next = b;
    }
    return next;
  }

  /**
   * @internal The segment list for bus addresses [busStart, busStart+length):
   * every constraint is checked here, the last line before a device sees it.
   */
  segments(busStart: bigint, length: number): DmaSegment[] {
    const len = BigInt(length);
    if (busStart % this.alignment !== 0n) {
      throw new DmaConstraintError('alignment', `bus address ${hex(busStart)} is not aligned to the tag's ${this.alignment} bytes`, `load at an offset that is a multiple of ${this.alignment}`);
    }
    if (busStart + len - 1n > this.addressLimit) {
      throw new DmaConstraintError('addressLimit', `bus addresses up to ${hex(busStart + len - 1n)} exceed the tag's addressLimit ${hex(this.addressLimit)}`, 'load memory allocated under a tag with this addressLimit');
    }
    // Drivers get bus addresses as numbers (busAddress()): exact only below 2^53.
    if (busStart + len > MAX_NUMBER_ADDRESS) throw new UpciError('KERNEL', `bus_dma: bus address ${hex(busStart + len - 1n)} is beyond 2^53`);
    this.countSegments(busStart, len);
    const out: DmaSegment[] = [];
    let at = busStart;
    const end = busStart + len;
    while (at < end) {
      const next = this.segmentEnd(at, end);
      out.push(Object.freeze({ busAddress: at, length: Number(next - at) }));
      at = next;
    }
    return out;
  }
}

const memoryOfBuffer = new WeakMap<SharedArrayBuffer, DmaMemory>();

/** bus_dmamem: DMA memory, reachable by the device until free(). */
export class DmaMemory {
  private buf: SharedArrayBuffer | undefined;
  /** @internal loads of this memory that are still loaded */
  loads = 0;

  /** @internal use DmaTag.allocMemory */
  constructor(
    readonly tag: DmaTag,
    buffer: SharedArrayBuffer,
    readonly size: number,
    /** @internal Bus address of the first byte (an IOVA under an IOMMU). */ readonly iova: bigint,
    /** @internal The kernel's allocation ('kernel' model), undefined for 'iommu'. */ readonly allocation: DmaAllocation | undefined,
  ) {
    this.buf = buffer;
  }

  /** The memory, shared with any worker it is posted to. Throws once freed. */
  get buffer(): SharedArrayBuffer {
    if (this.buf === undefined) throw released('this DMA memory has been freed');
    return this.buf;
  }

  get freed(): boolean {
    return this.buf === undefined;
  }

  /**
   * bus_dmamem_unmap + bus_dmamem_free: removes the IOMMU mapping (its IOVA
   * goes to quarantine), then unpins and revokes the pages. Legal while the
   * device masters the bus for other DMA; refused while a map has it loaded.
   */
  free(): void {
    if (this.buf === undefined) throw released('this DMA memory was already freed');
    this.tag.dma.live();
    if (this.loads > 0) {
      throw new UpciError('BUSY', `bus_dma: cannot free DMA memory that ${this.loads} map(s) still have loaded`, 'unload those maps first');
    }
    this.teardown();
  }

  /** @internal */
  teardown(): void {
    const buf = this.buf;
    if (buf === undefined) return;
    this.buf = undefined;
    const dma = this.tag.dma;
    dma.memories.delete(this);
    try {
      if (this.allocation !== undefined) {
        dma.allocator!.free(this.allocation);
      } else {
        dma.iommu!.unmap(this.iova, this.size);
        // Only once the kernel dropped the mapping may the IOVA be handed out again.
        dma.iova.release(this.iova);
      }
    } finally {
      revoke(buf);
    }
  }
}

/** bus_dmamap_t, unloaded: has no segments. load() gives a LoadedDmaMap. */
export class DmaMap {
  private current: LoadedDmaMap | undefined;
  private destroyed = false;

  /** @internal use DmaTag.createMap */
  constructor(
    readonly tag: DmaTag,
    readonly maxSize: number,
  ) {}

  /** The current load, if any. */
  get loaded(): LoadedDmaMap | undefined {
    return this.current?.isLoaded ? this.current : undefined;
  }

  /**
   * bus_dmamap_load: makes [offset, offset+length) of `source` reachable by
   * the device. DmaMemory is already in the IOMMU (no system call); a
   * SharedArrayBuffer is pinned and mapped now and unmapped at unload(). Its
   * address must be page-aligned and the pages the range touches must lie
   * inside it.
   */
  load(source: DmaMemory | SharedArrayBuffer, offset = 0, length?: number, options: LoadOptions = {}): LoadedDmaMap {
    const dma = this.tag.dma;
    dma.live();
    if (this.destroyed) throw released('this map was destroyed');
    if (this.loaded !== undefined) throw new UpciError('BUSY', 'bus_dma: this map is already loaded', 'unload() it first, or create another map');
    if (source instanceof SharedArrayBuffer) source = memoryOfBuffer.get(source) ?? source;
    const total = source instanceof DmaMemory ? source.size : source.byteLength;
    const len = length ?? total - offset;
    if (!(Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(len) && len > 0 && offset + len <= total)) {
      throw new DmaConstraintError('range', `range [${offset}, ${offset} + ${len}) is not inside the ${total}-byte source`);
    }
    if (len > this.maxSize) throw new DmaConstraintError('maxSize', `${len} bytes exceed this map's maxSize of ${this.maxSize}`);

    if (source instanceof DmaMemory) {
      if (source.freed) throw released('cannot load DMA memory that has been freed');
      if (source.tag.dma !== dma) throw new UpciError('OUT_OF_RANGE', 'bus_dma: this DMA memory belongs to another device', 'allocate it with a tag of this device');
      const segments = this.tag.segments(source.iova + BigInt(offset), len);
      source.loads++;
      return this.track(new LoadedDmaMap(this, source, offset, segments, len, undefined));
    }

    const iommu = dma.iommu;
    if (iommu === undefined) {
      throw new UpciError(
        'KERNEL',
        `bus_dma: ${dma.address}'s kernel port allocates DMA memory itself and cannot make memory this process allocated visible to the device`,
        'allocate the buffer with tag.allocMemory() and use its .buffer',
      );
    }

    const granule = dma.iova.granule;
    const base = addressOf(source);
    if (base % granule !== 0n) {
      throw new DmaConstraintError('pageAlignment', `the SharedArrayBuffer at ${hex(base)} is not aligned to the IOMMU page (${granule} bytes)`, 'allocate it with allocShared() or tag.allocMemory()');
    }
    const first = (BigInt(offset) / granule) * granule;
    const last = ((BigInt(offset + len) + granule - 1n) / granule) * granule;
    if (last > BigInt(source.byteLength)) {
      throw new DmaConstraintError('pageAlignment', `the range ends in a partial page of the ${source.byteLength}-byte buffer; mapping that page would expose memory beyond it`, 'use a buffer whose length is a multiple of the page size');
    }
    const span = last - first;
    const within = BigInt(offset) - first;
    // Reserve IOVA so that the first byte (not the page) lands on the tag's alignment.
    if (within % (this.tag.alignment < granule ? this.tag.alignment : granule) !== 0n) {
      throw new DmaConstraintError('alignment', `offset ${offset} cannot give a bus address aligned to ${this.tag.alignment}`, `load at an offset that is a multiple of ${this.tag.alignment}`);
    }
    const iova = dma.iova.allocate({ size: span, alignment: this.tag.alignment, limit: this.tag.addressLimit, boundary: this.tag.boundary });
    let segments: DmaSegment[];
    try {
      segments = this.tag.segments(iova + within, len);
      iommu.map(base + first, iova, Number(span), options.access ?? 'both');
    } catch (e) {
      dma.iova.release(iova);
      throw e;
    }
    return this.track(new LoadedDmaMap(this, source, offset, segments, len, { iova, size: Number(span) }));
  }

  private track(l: LoadedDmaMap): LoadedDmaMap {
    this.current = l;
    this.tag.dma.loads.add(l);
    return l;
  }

  /** bus_dmamap_destroy. Refused while loaded. */
  destroy(): void {
    if (this.loaded !== undefined) throw new UpciError('BUSY', 'bus_dma: cannot destroy a loaded map', 'unload() it first');
    this.destroyed = true;
  }
}

/** A loaded bus_dmamap_t: the segments a device may be given, until unload(). */
export class LoadedDmaMap {
  private segs: readonly DmaSegment[] | undefined;

  /** @internal use DmaMap.load */
  constructor(
    readonly map: DmaMap,
    private readonly source: DmaMemory | SharedArrayBuffer,
    /** Where the loaded range starts in `source`. */
    private readonly offset: number,
    segments: DmaSegment[],
    /** Bytes loaded. */
    readonly length: number,
    /** The mapping this load made (SharedArrayBuffer sources), undefined for DmaMemory. */
    private readonly own: { iova: bigint; size: number } | undefined,
  ) {
    this.segs = Object.freeze(segments);
  }

  get isLoaded(): boolean {
    return this.segs !== undefined;
  }

  /** @internal Whether this load made its own IOMMU mapping (a SharedArrayBuffer source). */
  get ownsMapping(): boolean {
    return this.own !== undefined && this.segs !== undefined;
  }

  /** The DMA segments (bus address + length), in order. Throws once unloaded. */
  get segments(): readonly DmaSegment[] {
    if (this.segs === undefined) throw released('this map was unloaded; its bus addresses are no longer valid');
    return this.segs;
  }

  /**
   * The bus address of byte `offset` of the loaded range, as a number (bus
   * addresses are below 2^53; checked at load): what a driver writes into a
   * descriptor. Throws once unloaded.
   */
  busAddress(offset = 0): number {
    const segs = this.segments;
    if (!(offset >= 0 && offset < this.length)) throw new DmaConstraintError('range', `offset ${offset} is outside the ${this.length} loaded bytes`);
    let at = offset;
    for (const s of segs) {
      if (at < s.length) return Number(s.busAddress) + at;
      at -= s.length;
    }
    throw new UpciError('KERNEL', 'bus_dma: segments do not cover the loaded length');
  }

  /**
   * bus_dmamap_sync. On x86 (and any platform VFIO accepts: since Linux 5.19
   * VFIO requires an IOMMU that enforces cache coherence for DMA) caches are
   * coherent with DMA, so every operation is a full fence: CPU writes before a
   * PREWRITE are globally visible before the doorbell write that follows it,
   * and CPU reads after a POSTREAD are not hoisted above it.
   *
   * Contract for a non-coherent platform (not supported by this
   * implementation): PREWRITE must clean (write back) the cache lines of the
   * range, PREREAD must clean or invalidate them so no dirty line is written
   * over the device's data later, POSTREAD must invalidate them before the CPU
   * reads, POSTWRITE needs nothing beyond ordering. That needs cache
   * maintenance on the buffer's lines, which would go through the kernel port.
   */
  sync(ops: number, offset = 0, length: number = this.length - offset): void {
    if (this.segs === undefined) throw released('cannot sync a map that was unloaded');
    if ((ops & ~0x0f) !== 0 || ops === 0) throw new UpciError('OUT_OF_RANGE', `bus_dma: sync operations ${hex(ops)} are not a combination of DmaSync flags`);
    if (!(offset >= 0 && length >= 0 && offset + length <= this.length)) {
      throw new DmaConstraintError('range', `sync range [${offset}, ${offset} + ${length}) is outside the ${this.length} loaded bytes`);
    }
    Atomics.add(fenceCell, 0, 0);
    // The 'kernel' model's bus_dmamap_sync (bounce buffers, non-coherent caches are the kernel's business there).
    if (this.source instanceof DmaMemory && this.source.allocation !== undefined) {
      this.map.tag.dma.allocator!.sync(this.source.allocation, ops, this.offset + offset, length);
    }
  }

  /**
   * bus_dmamap_unload, once the device has finished with the range: the
   * segments become invalid; a SharedArrayBuffer source is unmapped from the
   * IOMMU and unpinned, and its IOVA quarantined. Legal while bus mastering
   * is on for the device's other DMA. Returns the map, unloaded, for reuse.
   */
  unload(): DmaMap {
    if (this.segs === undefined) throw released('this map was already unloaded');
    this.map.tag.dma.live();
    this.teardown();
    return this.map;
  }

  /** @internal */
  teardown(): void {
    if (this.segs === undefined) return;
    this.segs = undefined;
    const dma = this.map.tag.dma;
    dma.loads.delete(this);
    if (this.source instanceof DmaMemory) {
      this.source.loads--;
      return;
    }
    if (this.own !== undefined) {
      dma.iommu!.unmap(this.own.iova, this.own.size);
      // Only once the kernel dropped the mapping may the IOVA be handed out again.
      dma.iova.release(this.own.iova);
    }
  }
}
