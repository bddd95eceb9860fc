/**
 * A virtio-blk disk as a BlockDevice: each request one chain of the
 * request queue (header, data, status; virtio 1.x §5.2.6), its header and
 * status byte in a small DMA pool, its data where it is (registered
 * memory: one mapping at register(), none per request) or in a pre-mapped
 * bounce buffer (one copy, no map), larger requests split to
 * maxTransferBytes, and a wait list when the ring or the bounce buffers
 * are all taken. Sectors are 512 bytes whatever the block size (§5.2.6).
 */
import type { DmaTag, LoadedDmaMap } from '../../pci/bus-dma.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import { mapWhole } from '../registered-mapping.js';
import type { SplitRing } from '../virtio/split-ring.js';
import { BlockDeviceBase, BlockGoneError, BlockRequestError, RegisteredMemory, checkRequest, type BlockGeometry, type BlockOperation, type RegisteredBuffer } from '../block.js';

const T_IN = 0;
const T_OUT = 1;
const T_FLUSH = 4;
const TYPE_NAMES: Readonly<Record<number, string>> = { [T_IN]: 'read', [T_OUT]: 'write', [T_FLUSH]: 'flush' };
const STATUS_NAMES = ['OK', 'IOERR', 'UNSUPP'];
/** Header (type, reserved, sector: 16 bytes) then the status byte the device writes. */
const HEADER_BYTES = 16;

/** One chain's end: the device's status, or the device gone. */
type Ending = (error: Error | undefined) => void;

/** Registered memory's DMA map, shared by its registrations, unloaded when none is left and no request uses it. */
class Mapping {
  registrations = 0;
  inFlight = 0;
  constructor(readonly memory: SharedArrayBuffer, readonly map: LoadedDmaMap, readonly bus: number) {}
}

class VirtioRegistration extends RegisteredMemory {
  private active = true;

  constructor(private readonly disk: VirtioDisk, readonly mapping: Mapping) {
    super(new Uint8Array(mapping.memory));
    mapping.registrations++;
  }

  get live(): boolean {
    return this.active && this.mapping.map.isLoaded;
  }

  read(lba: number, blocks: number, offset: number, tag: number): boolean {
    return this.disk.submitRegistered(this, T_IN, lba, blocks, offset, tag);
  }

  write(lba: number, blocks: number, offset: number, tag: number): boolean {
    return this.disk.submitRegistered(this, T_OUT, lba, blocks, offset, tag);
  }

  unregister(): void {
    if (!this.active) return;
    this.active = false;
    this.mapping.registrations--;
    this.disk.release(this.mapping, 0);
  }
}

export class VirtioDisk extends BlockDeviceBase {
  private readonly headers: DmaPool;
  private readonly headerView: DataView;
  private readonly bounce: DmaPool;
  private readonly bounceViews: Uint8Array[];
  /** Per head: what ends a promise request's chain (undefined: a request on registered memory), its header entry, its bounce entry (-1: none). */
  private readonly endings: (Ending | undefined)[];
  private readonly headerOf: Int32Array;
  private readonly bounceOf: Int32Array;
  /** Per head, for a request on registered memory: the registration, the caller's tag, what to report. */
  private readonly owners: (VirtioRegistration | undefined)[];
  private readonly tags: Int32Array;
  private readonly lbas: Float64Array;
  private readonly counts: Int32Array;
  private readonly types: Uint8Array;
  private readonly started: Float64Array;
  private readonly mappings = new Map<SharedArrayBuffer, Mapping>();
  private readonly waiting: (() => boolean)[] = [];
  /** Settlers of every promise request not yet ended, for abandon(). */
  private readonly pending = new Set<(e: Error) => void>();
  private readonly addresses = new Float64Array(3);
  private readonly lengths = new Int32Array(3);
  private gone: string | undefined;
  private readonly onUsed = (head: number) => this.chainEnded(head);
  /** Chains completed by the device. */
  reaped = 0;
  /** Fault injection: reap() throws at this many completions (undefined: never). */
  failAt: number | undefined;

  constructor(
    geometry: BlockGeometry,
    private readonly ring: SplitRing,
    private readonly tag: DmaTag,
    /** Whether the device has a volatile cache to flush (VIRTIO_BLK_F_FLUSH). */
    private readonly canFlush: boolean,
  ) {
    super(geometry);
    const size = ring.size;
    this.headers = tag.createPool({ entrySize: HEADER_BYTES + 1, entries: size });
    this.headerView = new DataView(this.headers.buffer);
    // A data request takes 3 descriptors: more bounce buffers than size / 3 could never all be in flight.
    this.bounce = tag.createPool({ entrySize: geometry.maxTransferBytes, entries: Math.max(1, Math.floor(size / 3)) });
    this.bounceViews = Array.from({ length: this.bounce.entries }, (_, i) => new Uint8Array(this.bounce.buffer, this.bounce.offsetOf(i), geometry.maxTransferBytes));
    this.endings = new Array<Ending | undefined>(size).fill(undefined);
    this.owners = new Array<VirtioRegistration | undefined>(size).fill(undefined);
    this.headerOf = new Int32Array(size);
    this.bounceOf = new Int32Array(size);
    this.tags = new Int32Array(size);
    this.lbas = new Float64Array(size);
    this.counts = new Int32Array(size);
    this.types = new Uint8Array(size);
    this.started = new Float64Array(size);
  }

  /** Descriptors in the request queue. */
  get queueDepth(): number {
    return this.ring.size;
  }

  private goneError(): BlockGoneError {
    return new BlockGoneError(`${this.name}: ${this.gone}`);
  }

  /**
   * One chain: header, `bytes` of data at bus address `data` (-1: a bounce
   * buffer, filled from `from` for a write), status. The head, or -1 when
   * the ring or the bounce buffers are full (nothing taken).
   */
  private submit(type: number, lba: number, bytes: number, data: number, from: Uint8Array | undefined): number {
    if (this.gone !== undefined) throw this.goneError();
    const descriptors = bytes > 0 ? 3 : 2;
    if (this.ring.free < descriptors) return -1;
    const b = bytes > 0 && data < 0 ? this.bounce.alloc() : -1;
    if (bytes > 0 && data < 0 && b < 0) return -1;
    const h = this.headers.alloc();
    const at = this.headers.offsetOf(h);
    const sector = lba * (this.blockSize / 512);
    this.headerView.setUint32(at, type, true);
    this.headerView.setUint32(at + 4, 0, true);
    this.headerView.setUint32(at + 8, sector >>> 0, true);
    this.headerView.setUint32(at + 12, Math.floor(sector / 2 ** 32), true);
    this.headerView.setUint8(at + HEADER_BYTES, 0xff);
    if (b >= 0 && from !== undefined) this.bounceViews[b]!.set(from);
    this.addresses[0] = this.headers.busAddresses[h]!;
    this.lengths[0] = HEADER_BYTES;
    if (bytes > 0) {
      this.addresses[1] = b >= 0 ? this.bounce.busAddresses[b]! : data;
      this.lengths[1] = bytes;
    }
    this.addresses[descriptors - 1] = this.headers.busAddresses[h]! + HEADER_BYTES;
    this.lengths[descriptors - 1] = 1;
    // The device writes a read's data and every status byte.
    const head = this.ring.add(descriptors, this.addresses, this.lengths, type === T_IN ? 1 : descriptors - 1);
    this.headerOf[head] = h;
    this.bounceOf[head] = b;
    this.types[head] = type;
    this.ring.kick();
    return head;
  }

  /** Takes what the device completed, then starts what waited; throws on a device fault or at failAt (a driver crash, supervised). */
  reap(): number {
    const n = this.ring.reap(this.onUsed);
    while (this.waiting.length > 0 && this.gone === undefined && this.waiting[0]!()) this.waiting.shift();
    return n;
  }

  private chainEnded(head: number): void {
    const h = this.headerOf[head]!;
    const status = this.headerView.getUint8(this.headers.offsetOf(h) + HEADER_BYTES);
    this.headers.release(h);
    const error = status === 0 ? undefined : new Error(`${this.name}: the device completed a ${TYPE_NAMES[this.types[head]!]} with status ${STATUS_NAMES[status] ?? status}`);
    const ending = this.endings[head];
    this.endings[head] = undefined;
    if (ending !== undefined) ending(error);
    else this.registeredEnded(head, error);
    const b = this.bounceOf[head]!;
    if (b >= 0) this.bounce.release(b);
    this.reaped++;
    if (this.failAt !== undefined && this.reaped >= this.failAt) {
      this.failAt = undefined;
      throw new Error(`fault injection: failAfterCompletions=${this.reaped} reached`);
    }
  }

  private registeredEnded(head: number, error: Error | undefined): void {
    const registration = this.owners[head]!;
    this.owners[head] = undefined;
    this.release(registration.mapping, -1);
    if (this.reporting) this.report(this.types[head] === T_IN ? 'read' : 'write', this.lbas[head]!, this.counts[head]!, error, this.started[head]!);
    registration.emitEnd(this.tags[head]!, error);
  }

  /** Everything in flight or waiting fails with BlockGoneError, and nothing new starts: the host is taking the device back (reset already). */
  abandon(reason: string): void {
    this.gone = reason;
    this.waiting.length = 0;
    for (const settle of [...this.pending]) settle(this.goneError());
    for (let head = 0; head < this.owners.length; head++) if (this.owners[head] !== undefined) this.registeredEnded(head, this.goneError());
  }

  /** A chain of a promise request, to run now or when room frees up: false while there is none. */
  private chunk(type: number, lba: number, bytes: number, data: number, buffer: Uint8Array | undefined, done: Ending): () => boolean {
    return () => {
      const head = this.submit(type, lba, bytes, data, type === T_OUT ? buffer : undefined);
      if (head < 0) return false;
      const b = this.bounceOf[head]!;
      this.endings[head] = type === T_IN && b >= 0 ? (e) => {
        if (e === undefined) buffer!.set(this.bounceViews[b]!.subarray(0, bytes));
        done(e);
      } : done;
      return true;
    };
  }

  /** One promise over the chains `issue` makes: settled once each ended (the first error wins), or the device is gone. */
  private request(op: BlockOperation, lba: number, blocks: number, issue: (done: Ending) => (() => boolean)[], mapping?: Mapping): Promise<void> {
    if (this.gone !== undefined) return Promise.reject(this.goneError());
    const started = performance.now();
    if (mapping !== undefined) mapping.inFlight++;
    return new Promise<void>((resolve, reject) => {
      let failure: Error | undefined;
      const settle = (e: Error | undefined) => {
        this.pending.delete(settle);
        if (mapping !== undefined) this.release(mapping, -1);
        this.report(op, lba, blocks, e, started);
        if (e === undefined) resolve();
        else reject(e);
      };
      const chunks = issue((e) => {
        failure ??= e;
        if (--left === 0) settle(failure);
      });
      let left = chunks.length;
      this.pending.add(settle);
      for (const run of chunks) if (this.waiting.length > 0 || !run()) this.waiting.push(run);
    });
  }

  private transfer(type: number, lba: number, blocks: number, buffer: Uint8Array): Promise<void> {
    // Registered memory is given to the device where it is; any other buffer goes through the bounce buffers.
    const mapping = buffer.buffer instanceof SharedArrayBuffer ? this.mappings.get(buffer.buffer) : undefined;
    const direct = mapping?.map.isLoaded === true ? mapping.bus + buffer.byteOffset : -1;
    const chunkBlocks = this.maxTransferBytes / this.blockSize;
    return this.request(type === T_IN ? 'read' : 'write', lba, blocks, (done) => {
      const chunks: (() => boolean)[] = [];
      for (let first = 0; first < blocks; first += chunkBlocks) {
        const at = first * this.blockSize;
        const bytes = Math.min(chunkBlocks, blocks - first) * this.blockSize;
        chunks.push(this.chunk(type, lba + first, bytes, direct < 0 ? -1 : direct + at, buffer.subarray(at, at + bytes), done));
      }
      return chunks;
    }, direct < 0 ? undefined : mapping);
  }

  read(lba: number, blocks: number, into?: Uint8Array): Promise<Uint8Array> {
    const refused = this.refusal(() => checkRequest.read(this, lba, blocks, into));
    if (refused !== undefined) return Promise.reject(refused);
    const buffer = into ?? new Uint8Array(blocks * this.blockSize);
    return this.transfer(T_IN, lba, blocks, buffer).then(() => buffer);
  }

  write(lba: number, data: Uint8Array): Promise<void> {
    const refused = this.refusal(() => checkRequest.write(this, lba, data));
    if (refused !== undefined) return Promise.reject(refused);
    return this.transfer(T_OUT, lba, data.length / this.blockSize, data);
  }

  flush(): Promise<void> {
    // Without VIRTIO_BLK_F_FLUSH the device has no volatile cache: a completed write is durable already.
    if (!this.canFlush) return this.gone === undefined ? Promise.resolve() : Promise.reject(this.goneError());
    return this.request('flush', 0, 0, (done) => [this.chunk(T_FLUSH, 0, 0, -1, undefined, done)]);
  }

  discard(lba: number, blocks: number): Promise<void> {
    // Discard is not negotiated (canDiscard is false): the check always refuses.
    return Promise.reject(this.refusal(() => checkRequest.discard(this, lba, blocks)));
  }

  register(memory: SharedArrayBuffer): RegisteredBuffer {
    if (!(memory instanceof SharedArrayBuffer)) throw new BlockRequestError(`${this.name}: only a SharedArrayBuffer can be registered`, 'allocate the memory with allocShared() or allocBuffer()');
    if (this.gone !== undefined) throw this.goneError();
    const known = this.mappings.get(memory);
    if (known?.map.isLoaded) return new VirtioRegistration(this, known);
    const map = mapWhole(this.name, this.tag, memory);
    const mapping = new Mapping(memory, map, map.busAddress(0));
    this.mappings.set(memory, mapping);
    return new VirtioRegistration(this, mapping);
  }

  /** @internal A registration (inFlight 0) or a request (-1) of `mapping` is done: unloaded when it was the last user. */
  release(mapping: Mapping, inFlight: number): void {
    mapping.inFlight += inFlight;
    if (mapping.registrations > 0 || mapping.inFlight > 0) return;
    if (mapping.map.isLoaded) mapping.map.unload();
    if (this.mappings.get(mapping.memory) === mapping) this.mappings.delete(mapping.memory);
  }

  /** @internal A request on registered memory: one chain, no promise, no allocation; false when the ring is full. */
  submitRegistered(registration: VirtioRegistration, type: number, lba: number, blocks: number, offset: number, tag: number): boolean {
    if (!checkRequest.registeredOk(this, lba, blocks, offset, registration.bytes.length)) {
      this.refused++;
      checkRequest.registered(this, lba, blocks, offset, registration.bytes.length);
    }
    if (!registration.live) {
      this.refused++;
      throw new BlockRequestError(`${this.name}: the memory is no longer registered`, 'register it again');
    }
    const head = this.submit(type, lba, blocks * this.blockSize, registration.mapping.bus + offset, undefined);
    if (head < 0) return false;
    this.owners[head] = registration;
    this.tags[head] = tag;
    this.lbas[head] = lba;
    this.counts[head] = blocks;
    this.started[head] = this.reporting ? performance.now() : 0;
    registration.mapping.inFlight++;
    return true;
  }
}
