/**
 * A virtio-blk disk as a BlockDevice: each request one chain of the
 * request queue (header, data, status; virtio 1.x §5.2.6) in a tracker
 * (kit/tracker.ts) with its header and status byte and its bounce buffer,
 * bus addresses computed once; its data where it is (registered memory,
 * kit/registered.ts: one mapping at register(), none per request) or in
 * the tracker's bounce buffer (one copy, no map), larger requests split to
 * maxTransferBytes, and a wait list when every tracker is taken. Sectors
 * are 512 bytes whatever the block size (§5.2.6).
 */
import type { DmaTag } from '../../pci/bus-dma.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import { checkRequest, type BlockGeometry, type BlockOperation } from '../block.js';
import { high32 } from '../kit/bus-address.js';
import { RegisteredBlockDevice, RegisteredRequests, type Registration } from '../kit/registered.js';
import { Trackers, entryViews } from '../kit/tracker.js';
import type { SplitRing } from '../virtio/split-ring.js';

const T_IN = 0;
const T_OUT = 1;
const T_FLUSH = 4;
const TYPE_NAMES: Readonly<Record<number, string>> = { [T_IN]: 'read', [T_OUT]: 'write', [T_FLUSH]: 'flush' };
const STATUS_NAMES = ['OK', 'IOERR', 'UNSUPP'];
/** Header (type, reserved, sector: 16 bytes) then the status byte the device writes. */
const HEADER_BYTES = 16;

/** One chain's end: the device's status, or the device gone. */
type Ending = (error: Error | undefined) => void;

export class VirtioDisk extends RegisteredBlockDevice {
  /** A data request takes 3 descriptors: one tracker per 3, so a free tracker always finds its descriptors free. */
  private readonly trackers: Trackers;
  private readonly headers: DmaPool;
  private readonly headerView: DataView;
  private readonly bounce: DmaPool;
  private readonly bounceViews: Uint8Array[];
  /** Per chain head: its tracker. */
  private readonly trackerOf: Int32Array;
  /** Per tracker: what ends a promise request's chain (undefined: a request on registered memory), its type. */
  private readonly endings: (Ending | undefined)[];
  private readonly types: Uint8Array;
  private readonly registered: RegisteredRequests;
  private readonly waiting: (() => boolean)[] = [];
  /** The chain's buffers: the caller of submit() sets addresses[1] for data where it is. */
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
    tag: DmaTag,
    /** Whether the device has a volatile cache to flush (VIRTIO_BLK_F_FLUSH). */
    private readonly canFlush: boolean,
  ) {
    super(geometry, tag);
    this.trackers = new Trackers(Math.max(1, Math.floor(ring.size / 3)));
    const count = this.trackers.count;
    this.headers = tag.createPool({ entrySize: HEADER_BYTES + 1, entries: count });
    this.headerView = new DataView(this.headers.buffer);
    this.bounce = tag.createPool({ entrySize: geometry.maxTransferBytes, entries: count });
    this.bounceViews = entryViews(this.bounce);
    this.trackerOf = new Int32Array(ring.size);
    this.endings = new Array<Ending | undefined>(count).fill(undefined);
    this.types = new Uint8Array(count);
    this.registered = new RegisteredRequests(count);
  }

  /** Descriptors in the request queue. */
  get queueDepth(): number {
    return this.ring.size;
  }

  protected get goneReason(): string | undefined {
    return this.gone;
  }

  /**
   * One chain in a free tracker: header, `bytes` of data (in the tracker's
   * bounce buffer, filled from `from` for a write, when `bounced`; else at
   * addresses[1]), status. The tracker, or -1 when every one is taken.
   */
  private submit(type: number, lba: number, bytes: number, bounced: boolean, from: Uint8Array | undefined): number {
    if (this.gone !== undefined) throw this.goneError();
    const t = this.trackers.take();
    if (t < 0) return -1;
    const at = this.headers.offsetOf(t);
    const sector = lba * (this.blockSize / 512);
    this.headerView.setUint32(at, type, true);
    this.headerView.setUint32(at + 4, 0, true);
    this.headerView.setUint32(at + 8, sector >>> 0, true);
    this.headerView.setUint32(at + 12, high32(sector), true);
    this.headerView.setUint8(at + HEADER_BYTES, 0xff);
    const descriptors = bytes > 0 ? 3 : 2;
    this.addresses[0] = this.headers.busAddresses[t]!;
    this.lengths[0] = HEADER_BYTES;
    if (bytes > 0) {
      if (bounced) this.addresses[1] = this.bounce.busAddresses[t]!;
      if (bounced && from !== undefined) this.bounceViews[t]!.set(from);
      this.lengths[1] = bytes;
    }
    this.addresses[descriptors - 1] = this.headers.busAddresses[t]! + HEADER_BYTES;
    this.lengths[descriptors - 1] = 1;
    // The device writes a read's data and every status byte.
    this.trackerOf[this.ring.add(descriptors, this.addresses, this.lengths, type === T_IN ? 1 : descriptors - 1)] = t;
    this.types[t] = type;
    this.ring.kick();
    return t;
  }

  /** Takes what the device completed, then starts what waited; throws on a device fault or at failAt (a driver crash, supervised). */
  reap(): number {
    const n = this.ring.reap(this.onUsed);
    while (this.waiting.length > 0 && this.gone === undefined && this.waiting[0]!()) this.waiting.shift();
    return n;
  }

  private chainEnded(head: number): void {
    const t = this.trackerOf[head]!;
    const status = this.headerView.getUint8(this.headers.offsetOf(t) + HEADER_BYTES);
    const error = status === 0 ? undefined : new Error(`${this.name}: the device completed a ${TYPE_NAMES[this.types[t]!]} with status ${STATUS_NAMES[status] ?? status}`);
    const ending = this.endings[t];
    this.endings[t] = undefined;
    // Given back first: a request on registered memory told of its end may submit the next at once (a read's ending copies its bounce buffer before anything else runs).
    this.trackers.give(t);
    if (ending !== undefined) ending(error);
    else this.registered.end(t, error);
    this.reaped++;
    if (this.failAt !== undefined && this.reaped >= this.failAt) {
      this.failAt = undefined;
      throw new Error(`fault injection: failAfterCompletions=${this.reaped} reached`);
    }
  }

  /** Everything in flight or waiting fails with BlockGoneError, and nothing new starts: the host is taking the device back (reset already). */
  abandon(reason: string): void {
    this.gone = reason;
    this.waiting.length = 0;
    this.failPending(() => this.goneError());
    for (let t = 0; t < this.trackers.count; t++) if (this.registered.owner[t] !== undefined) this.registered.end(t, this.goneError());
  }

  /** A chain of a promise request (data at bus address `direct`, or -1: bounced), to run now or when a tracker frees up: false while none is. */
  private chunk(type: number, lba: number, bytes: number, direct: number, buffer: Uint8Array | undefined, done: Ending): () => boolean {
    return () => {
      if (direct >= 0) this.addresses[1] = direct;
      const t = this.submit(type, lba, bytes, direct < 0, type === T_OUT ? buffer : undefined);
      if (t < 0) return false;
      this.endings[t] = type === T_IN && direct < 0 ? (e) => {
        if (e === undefined) buffer!.set(this.bounceViews[t]!.subarray(0, bytes));
        done(e);
      } : done;
      return true;
    };
  }

  /** One promise over the `count` chains `issue` makes (kit/registered.ts: settled()), each run now or once a tracker frees up. */
  private request(op: BlockOperation, lba: number, blocks: number, count: number, issue: (done: Ending, direct: number) => (() => boolean)[], buffer?: Uint8Array): Promise<void> {
    if (this.gone !== undefined) return Promise.reject(this.goneError());
    return this.settled(op, lba, blocks, buffer, 1, count, (done, direct) => {
      for (const run of issue(done, direct)) if (this.waiting.length > 0 || !run()) this.waiting.push(run);
    });
  }

  private transfer(type: number, lba: number, blocks: number, buffer: Uint8Array): Promise<void> {
    const chunkBlocks = this.maxTransferBytes / this.blockSize;
    return this.request(type === T_IN ? 'read' : 'write', lba, blocks, Math.ceil(blocks / chunkBlocks), (done, direct) => {
      const chunks: (() => boolean)[] = [];
      for (let first = 0; first < blocks; first += chunkBlocks) {
        const at = first * this.blockSize;
        const bytes = Math.min(chunkBlocks, blocks - first) * this.blockSize;
        chunks.push(this.chunk(type, lba + first, bytes, direct < 0 ? -1 : direct + at, buffer.subarray(at, at + bytes), done));
      }
      return chunks;
    }, buffer);
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
    return this.request('flush', 0, 0, 1, (done) => [this.chunk(T_FLUSH, 0, 0, -1, undefined, done)]);
  }

  discard(lba: number, blocks: number): Promise<void> {
    // Discard is not negotiated (canDiscard is false): the check always refuses.
    return Promise.reject(this.refusal(() => checkRequest.discard(this, lba, blocks)));
  }

  /** A request on registered memory (checked): one chain, no promise, no allocation; false when every tracker is taken. */
  protected issueRegistered(registration: Registration, write: boolean, lba: number, blocks: number, offset: number, tag: number): boolean {
    this.addresses[1] = registration.mapping.bus + offset;
    const t = this.submit(write ? T_OUT : T_IN, lba, blocks * this.blockSize, false, undefined);
    if (t < 0) return false;
    this.began(this.registered, t, registration, write, lba, blocks, tag);
    return true;
  }
}
