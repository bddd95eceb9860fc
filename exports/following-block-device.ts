/**
 * A block device that follows its provider across incarnations: one object
 * for as long as an export (the NBD server's /dev/nbdN) lives, while the
 * driver behind it is restarted under it.
 *
 * Each request goes to the current incarnation's device, got through the
 * services (`resolve`) once per incarnation, never the first one captured
 * for good. A request that fails because that incarnation was taken back
 * (BlockGoneError: the driver crashed, hung, was reloaded) waits for the
 * next incarnation and is issued to it again, so the client sees a delay,
 * not an error. Re-issuing is safe for a block device: a read reads again,
 * a write writes the same data at the same blocks (whether or not the old
 * incarnation's device had done it), a flush flushes again.
 *
 * Bounded: at most `maxWaiting` requests wait for an incarnation at once
 * (more are refused with BUSY), and none
 * waits longer than `waitMs`; close() (the export closed, or its provider
 * given up) fails whatever waits. A next incarnation whose geometry differs
 * from the first's is not followed: the client was told a size.
 *
 * Registered memory follows too (register(), allocBuffer()): the memory is
 * registered with each incarnation in turn, so the promise API's views of
 * it are DMAed directly by whichever serves, and a request on the
 * registration that the incarnation taken back did not end is issued again
 * to the next one, under the same bounds.
 */
import type { Subscription } from 'rxjs';
import { BlockDeviceBase, BlockGoneError, BlockRequestError, checkRequest, RegisteredMemory, type BlockDevice, type BlockOperation, type RegisteredBuffer } from '../drivers/block.js';
import { UpciError } from '../kernel/errors.js';

export interface FollowOptions {
  /** How long a request waits for the provider's next incarnation before it fails. */
  readonly waitMs: number;
  /** Requests waiting for an incarnation at once, at most. */
  readonly maxWaiting: number;
}

export interface FollowStats {
  /** Incarnations followed, the first included. */
  incarnations: number;
  /** Requests issued again to a later incarnation after theirs was taken back. */
  reissued: number;
  /** Requests waiting for an incarnation now. */
  waiting: number;
}

export class FollowingBlockDevice extends BlockDeviceBase {
  private current: BlockDevice | undefined;
  /** The incarnation last seen taken back: the services must not hand it out again. */
  private lost: BlockDevice | undefined;
  private next: Promise<BlockDevice> | undefined;
  private closed: string | undefined;
  private readonly closing: Promise<never>;
  private failWaiting!: (e: Error) => void;
  readonly stats: FollowStats = { incarnations: 1, reissued: 0, waiting: 0 };

  /**
   * `first` is the provider's device now; `resolve(timeoutMs)` gives the
   * current incarnation's (waiting for one up to timeoutMs);
   * `onFollow(stats)` is told each time a next incarnation is taken.
   */
  constructor(
    first: BlockDevice,
    private readonly resolve: (timeoutMs: number) => Promise<BlockDevice>,
    private readonly options: FollowOptions,
    private readonly onFollow: (stats: Readonly<FollowStats>) => void = () => {},
  ) {
    super(first);
    this.current = first;
    this.closing = new Promise<never>((_, reject) => (this.failWaiting = reject));
    this.closing.catch(() => {});
  }

  /** Registrations that follow this device: each registered with every incarnation taken. */
  private readonly registrations = new Set<FollowingRegistration>();

  register(memory: SharedArrayBuffer): RegisteredBuffer {
    if (this.closed !== undefined) throw new BlockGoneError(`${this.name}: ${this.closed}`);
    const registration = new FollowingRegistration(this, memory, this.options.maxWaiting);
    // The incarnation serving now cannot reach the memory: refused here, as the device itself refuses it.
    if (registration.refusal !== undefined) throw registration.refusal;
    this.registrations.add(registration);
    return registration;
  }

  /** The incarnation serving now, if one is (FollowingRegistration's). */
  get serving(): BlockDevice | undefined {
    return this.current;
  }

  /** `device` was taken back (a request on it ended with BlockGoneError): later requests wait for the next. */
  lose(device: BlockDevice): void {
    if (this.current !== device) return;
    this.current = undefined;
    this.lost = device;
  }

  /** A registration let go of its memory. */
  forget(registration: FollowingRegistration): void {
    this.registrations.delete(registration);
  }

  read(lba: number, blocks: number, into?: Uint8Array): Promise<Uint8Array> {
    return this.request('read', lba, blocks, () => checkRequest.read(this, lba, blocks, into), (d) => d.read(lba, blocks, into));
  }

  write(lba: number, data: Uint8Array): Promise<void> {
    return this.request('write', lba, data?.length / this.blockSize, () => checkRequest.write(this, lba, data), (d) => d.write(lba, data));
  }

  flush(): Promise<void> {
    return this.request('flush', 0, 0, () => {}, (d) => d.flush());
  }

  discard(lba: number, blocks: number): Promise<void> {
    return this.request('discard', lba, blocks, () => checkRequest.discard(this, lba, blocks), (d) => d.discard(lba, blocks));
  }

  /** Fails every waiting and later request with BlockGoneError naming `reason`; requests on the current incarnation end as it ends them. */
  close(reason: string): void {
    if (this.closed !== undefined) return;
    this.closed = reason;
    this.current = undefined;
    this.failWaiting(new BlockGoneError(`${this.name}: ${reason}`));
  }

  private async request<T>(op: BlockOperation, lba: number, blocks: number, check: () => void, issue: (d: BlockDevice) => Promise<T>): Promise<T> {
    const refused = this.refusal(check);
    if (refused !== undefined) throw refused;
    const started = performance.now();
    let device = this.current ?? await this.incarnation();
    for (let reissue = false; ; reissue = true) {
      if (reissue) this.stats.reissued++;
      try {
        const result = await issue(device);
        this.report(op, lba, blocks, undefined, started);
        return result;
      } catch (e) {
        if (!(e instanceof BlockGoneError) || this.closed !== undefined) {
          this.report(op, lba, blocks, e as Error, started);
          throw e;
        }
        this.lose(device);
        device = await this.incarnation().catch((why: Error) => {
          this.report(op, lba, blocks, why, started);
          throw why;
        });
      }
    }
  }

  /** The current incarnation's device, waiting (bounded) for the next when the last was taken back. */
  async incarnation(): Promise<BlockDevice> {
    if (this.closed !== undefined) throw new BlockGoneError(`${this.name}: ${this.closed}`);
    if (this.current !== undefined) return this.current;
    if (this.stats.waiting >= this.options.maxWaiting) {
      throw new UpciError('BUSY', `${this.name}: ${this.stats.waiting} requests already wait for its driver's next incarnation`, 'send fewer requests at once while the driver restarts');
    }
    this.stats.waiting++;
    try {
      this.next ??= this.follow().finally(() => (this.next = undefined));
      return await Promise.race([this.next, this.closing]);
    } finally {
      this.stats.waiting--;
    }
  }

  private async follow(): Promise<BlockDevice> {
    let device: BlockDevice;
    try {
      device = await this.resolve(this.options.waitMs);
    } catch (e) {
      throw new BlockGoneError(`${this.name}: its driver did not come back within ${this.options.waitMs} ms (${e instanceof Error ? e.message : String(e)})`);
    }
    if (this.closed !== undefined) throw new BlockGoneError(`${this.name}: ${this.closed}`);
    // Never from the services (they forget an incarnation before failing its requests); refused rather than re-issued to forever.
    if (device === this.lost) throw new BlockGoneError(`${this.name}: the services still give the incarnation that was taken back`);
    if (device.blockSize !== this.blockSize || device.blockCount !== this.blockCount) {
      throw new BlockGoneError(`${this.name}: its driver came back with ${device.blockCount} blocks of ${device.blockSize} bytes, not the ${this.blockCount} of ${this.blockSize} it was exported with`);
    }
    this.current = device;
    this.stats.incarnations++;
    for (const registration of this.registrations) registration.follow(device);
    this.onFollow(this.stats);
    return device;
  }
}

/** A request on a following registration, kept until it ends so that it can be issued again. */
interface Tracked {
  read: boolean;
  lba: number;
  blocks: number;
  offset: number;
  tag: number;
  /** The incarnation's registration it went to; undefined while it waits for one. */
  to: RegisteredBuffer | undefined;
}

/**
 * Memory registered with a FollowingBlockDevice: registered with its
 * incarnation now and with each next one. Requests go to the current
 * incarnation's registration; one that ends with BlockGoneError (or finds
 * the incarnation gone) waits for the next and is issued to it again,
 * in the order they came. Records are reused: no allocation per request.
 */
class FollowingRegistration extends RegisteredMemory {
  private inner: RegisteredBuffer | undefined;
  private innerEnds: Subscription | undefined;
  /** Issued to `inner` and not ended. */
  private readonly issued: Tracked[] = [];
  /** Waiting for an incarnation, or for room in the current one, in order. */
  private readonly waiting: Tracked[] = [];
  private readonly spare: Tracked[] = [];
  private waitingForNext = false;
  private active = true;
  /** Why the incarnation serving now refused the memory: requests are refused with it until the next one takes it. */
  refusal: Error | undefined;

  constructor(
    private readonly owner: FollowingBlockDevice,
    private readonly memory: SharedArrayBuffer,
    private readonly maxWaiting: number,
  ) {
    super(new Uint8Array(memory));
    const serving = owner.serving;
    if (serving !== undefined) this.follow(serving);
  }

  read(lba: number, blocks: number, offset: number, tag: number): boolean {
    return this.start(true, lba, blocks, offset, tag);
  }

  write(lba: number, blocks: number, offset: number, tag: number): boolean {
    return this.start(false, lba, blocks, offset, tag);
  }

  unregister(): void {
    if (!this.active) return;
    this.active = false;
    this.owner.forget(this);
    this.fail(new BlockGoneError(`${this.owner.name}: the memory was unregistered while its request waited for the driver's next incarnation`));
    this.inner?.unregister();
  }

  /** The owner took `device`: the memory is registered with it, and what waits goes to it. */
  follow(device: BlockDevice): void {
    if (this.inner !== undefined) {
      // What the last incarnation did not end goes again, first and in order; its late ends are not listened to.
      this.owner.stats.reissued += this.issued.length;
      for (const request of this.issued) request.to = undefined;
      this.waiting.unshift(...this.issued.splice(0));
      this.innerEnds?.unsubscribe();
      this.inner.unregister();
      this.inner = undefined;
    }
    if (!this.active) return;
    try {
      this.inner = device.register(this.memory);
      this.refusal = undefined;
    } catch (e) {
      this.refusal = e as Error;
      this.fail(this.refusal);
      return;
    }
    const inner = this.inner;
    this.innerEnds = inner.ends.subscribe((end) => this.ended(inner, end.tag, end.error));
    this.drain();
  }

  private start(read: boolean, lba: number, blocks: number, offset: number, tag: number): boolean {
    if (!this.active) throw new BlockRequestError(`${this.owner.name}: not registered`, 'register it');
    if (this.refusal !== undefined) throw this.refusal;
    if (!checkRequest.registeredOk(this.owner, lba, blocks, offset, this.bytes.length)) checkRequest.registered(this.owner, lba, blocks, offset, this.bytes.length);
    if (this.waiting.length > 0 || this.inner === undefined || this.owner.serving === undefined) {
      if (this.waiting.length >= this.maxWaiting) {
        throw new UpciError('BUSY', `${this.owner.name}: ${this.waiting.length} requests already wait on this registered memory`, 'start more once some of yours ended');
      }
      this.waiting.push(this.track(read, lba, blocks, offset, tag));
      this.drain();
      return true;
    }
    const request = this.track(read, lba, blocks, offset, tag);
    if (this.issue(request) === 'full') {
      this.spare.push(request);
      return false;
    }
    return true;
  }

  private track(read: boolean, lba: number, blocks: number, offset: number, tag: number): Tracked {
    const request = this.spare.pop() ?? { read, lba, blocks, offset, tag, to: undefined };
    request.read = read;
    request.lba = lba;
    request.blocks = blocks;
    request.offset = offset;
    request.tag = tag;
    request.to = undefined;
    return request;
  }

  /** Issues `request` to the current incarnation: 'issued', 'full' (no room now), or 'gone' (it waits for the next). */
  private issue(request: Tracked): 'issued' | 'full' | 'gone' {
    const inner = this.inner!;
    let started: boolean;
    try {
      started = request.read ? inner.read(request.lba, request.blocks, request.offset, request.tag) : inner.write(request.lba, request.blocks, request.offset, request.tag);
    } catch (e) {
      if (!(e instanceof BlockGoneError)) throw e;
      this.lost(inner);
      return 'gone';
    }
    if (!started) return 'full';
    request.to = inner;
    this.issued.push(request);
    return 'issued';
  }

  /** A request on `inner` ended; a gone one waits for the next incarnation, ahead of the others waiting. */
  private ended(inner: RegisteredBuffer, tag: number, error: Error | undefined): void {
    const at = this.issued.findIndex((r) => r.to === inner && r.tag === tag);
    if (at < 0) return;
    const request = this.issued[at]!;
    this.issued.splice(at, 1);
    if (error instanceof BlockGoneError && this.active) {
      this.owner.stats.reissued++;
      request.to = undefined;
      this.waiting.unshift(request);
      this.lost(inner);
      this.drain();
      return;
    }
    this.spare.push(request);
    this.emitEnd(tag, error);
    this.drain();
  }

  /** Issues what waits, in order, while the current incarnation has room; waits for the next one when there is none. */
  private drain(): void {
    while (this.waiting.length > 0) {
      if (this.refusal !== undefined) return this.fail(this.refusal);
      if (this.inner === undefined || this.owner.serving === undefined) return this.awaitNext();
      const request = this.waiting[0]!;
      const issued = this.issue(request);
      if (issued === 'full') {
        // Its room is taken by other users of the incarnation: with none of ours in flight no end of ours will call again.
        if (this.issued.length === 0) setTimeout(() => this.drain(), 1);
        return;
      }
      if (issued === 'gone') return this.awaitNext();
      this.waiting.shift();
    }
  }

  /** `inner` found its incarnation gone: if it is the one serving now, the owner waits for the next. */
  private lost(inner: RegisteredBuffer): void {
    if (this.inner !== inner) return;
    const device = this.owner.serving;
    if (device !== undefined) this.owner.lose(device);
  }

  /** Once: the owner's bounded wait for its next incarnation (which calls follow()); its failure fails what waits. */
  private awaitNext(): void {
    if (this.waitingForNext) return;
    this.waitingForNext = true;
    this.owner.incarnation().then(() => {
      this.waitingForNext = false;
      this.drain();
    }, (e: Error) => {
      this.waitingForNext = false;
      this.fail(e);
    });
  }

  /** Ends every waiting request with `error`. */
  private fail(error: Error): void {
    for (const request of this.waiting.splice(0)) {
      this.spare.push(request);
      this.emitEnd(request.tag, error);
    }
  }
}
