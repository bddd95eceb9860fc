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
 */
import { BlockDeviceBase, BlockGoneError, checkRequest, type BlockDevice, type BlockOperation, type RegisteredBuffer } from '../drivers/block.js';
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

  /**
   * Registered memory is one incarnation's DMA mapping, gone with it: it does not follow (yet). Refused, so that
   * nobody takes a registration here for one that survives a restart.
   */
  register(): RegisteredBuffer {
    throw new UpciError('UNSUPPORTED', `${this.name}: registered memory does not follow the provider across its restarts`,
      'use read()/write() here (bounced, and followed), or register with the device host.blockDevice() gives (one incarnation\'s)');
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
        if (this.current === device) {
          this.current = undefined;
          this.lost = device;
        }
        device = await this.incarnation().catch((why: Error) => {
          this.report(op, lba, blocks, why, started);
          throw why;
        });
      }
    }
  }

  /** The current incarnation's device, waiting (bounded) for the next when the last was taken back. */
  private async incarnation(): Promise<BlockDevice> {
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
    this.onFollow(this.stats);
    return device;
  }
}
