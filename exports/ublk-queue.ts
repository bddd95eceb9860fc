/**
 * The queue of a ublk disk (exports/ublk-control.ts makes the disk): the
 * kernel puts each request of /dev/ublkbN in a descriptor area mapped from
 * /dev/ublkcN and completes one of our FETCH commands on an io_uring; we
 * serve it from a BlockDevice and answer with COMMIT_AND_FETCH, which also
 * fetches the tag's next request. The ring's eventfd is watched by this
 * thread's own event loop (kernel/interrupt-watcher.ts): nothing polls.
 *
 * It runs where the data is: the host starts it beside the block device's
 * provider, in the driver's own thread (serveBeside(), services/service.ts),
 * so a request goes from the kernel to the device and back with no other
 * thread in between. Each tag's data buffer is registered memory of the
 * device (BlockDevice.allocBuffer): the kernel copies a write's data into
 * it, the device DMAs from and to it, and a read's data is copied out by the
 * kernel; no map, no copy and no allocation here per request. A device that
 * cannot register memory (a FollowingBlockDevice) is served through its
 * promise API from plain shared memory instead.
 *
 * When the device is gone under a request (its driver stopped or failed),
 * the request is not answered: the queue holds, and once it is stopped the
 * kernel requeues what it held (user recovery with re-issue) for the next
 * incarnation's queue. The OS sees a pause, not an error.
 *
 * The kernel is the queue's peer and is trusted to keep to the protocol,
 * but requests are still checked against the device: one past the end, or
 * not on a block boundary, is refused with EIO and never reaches it.
 */
import { closeSync, openSync } from 'node:fs';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import type { Subscription } from 'rxjs';
import { BlockGoneError, checkRequest, type BlockDevice, type BlockEnd, type RegisteredBuffer } from '../drivers/block.js';
import * as abi from '../kernel/linux/ublk-abi.js';
import { UringCmdRing } from '../kernel/linux/uring-cmd.js';
import { addressOf, allocShared, mapShared, PAGE_SIZE, revoke } from '../shm/mapping.js';
import { holdFd, watchSource, type SourceWatch } from '../kernel/interrupt-watcher.js';
import type { ServeBeside } from '../services/service.js';
import type { UblkGeometry } from './ublk-control.js';

const EIO = 5;
const EOPNOTSUPP = 95;
const SECTOR = 512;
/** Bytes one ublk request moves at most, unless the device takes less in one command. */
export const UBLK_MAX_IO_BYTES = 256 * 1024;

/** The geometry a ublk disk of `device` gets: one request is one device command at most. */
export function ublkGeometry(device: BlockDevice): UblkGeometry {
  const perCommand = Math.floor(device.maxTransferBytes / PAGE_SIZE) * PAGE_SIZE;
  return {
    name: device.name, blockSize: device.blockSize, blockCount: device.blockCount, canDiscard: device.canDiscard,
    maxIoBytes: Math.max(PAGE_SIZE, Math.min(UBLK_MAX_IO_BYTES, perCommand)),
  };
}

export interface UblkQueueStats {
  requests: number;
  /** Requests answered with an error (the device's, or refused here). */
  errors: number;
  reads: number;
  writes: number;
  flushes: number;
  discards: number;
  /** Requests left to the kernel to issue again, because the device went away under them. */
  held: number;
}

/** One request as ublk's descriptor gives it: sectors are 512 bytes whatever the device's block size. */
export interface UblkRequest {
  readonly op: number;
  readonly sector: number;
  readonly sectors: number;
}

/**
 * Serves one request through `device`'s promise API, with `buffer` the
 * tag's data buffer: resolves with the bytes moved (reads, writes), 0, or a
 * negated errno. What the device cannot take (past its end, off its block
 * boundary, larger than the buffer, an operation it lacks) is answered here
 * and never reaches it.
 */
export async function serveUblkRequest(device: BlockDevice, request: UblkRequest, buffer: Uint8Array): Promise<number> {
  const { op, sector, sectors } = request;
  const perBlock = device.blockSize / SECTOR;
  const bytes = sectors * SECTOR;
  const lba = sector / perBlock;
  const blocks = sectors / perBlock;
  const inRange = Number.isInteger(lba) && Number.isInteger(blocks) && blocks > 0 && lba + blocks <= device.blockCount;
  switch (op) {
    case abi.UBLK_IO_OP_READ:
    case abi.UBLK_IO_OP_WRITE: {
      if (!inRange || bytes > buffer.length) return -EIO;
      const data = buffer.subarray(0, bytes);
      if (op === abi.UBLK_IO_OP_READ) await device.read(lba, blocks, data);
      else await device.write(lba, data);
      return bytes;
    }
    case abi.UBLK_IO_OP_FLUSH:
      await device.flush();
      return 0;
    case abi.UBLK_IO_OP_DISCARD:
      if (!device.canDiscard) return -EOPNOTSUPP;
      if (!inRange) return -EIO;
      await device.discard(lba, blocks);
      return 0;
    default:
      return -EOPNOTSUPP;
  }
}

/** The device's registered memory of `bytes`, or undefined when it registers none (a FollowingBlockDevice). */
function registeredMemory(device: BlockDevice, bytes: number): RegisteredBuffer | undefined {
  try {
    return device.allocBuffer(bytes);
  } catch {
    return undefined;
  }
}

export interface UblkQueueOptions {
  /** The N of /dev/ublkcN. */
  readonly id: number;
  readonly queueDepth: number;
  /** The disk's max_io_buf_bytes: each tag's buffer. */
  readonly maxIoBytes: number;
}

export class UblkQueue {
  readonly stats: UblkQueueStats = { requests: 0, errors: 0, reads: 0, writes: 0, flushes: 0, discards: 0, held: 0 };
  private readonly charFd: number;
  private readonly unholdCharFd: () => void;
  private readonly descriptors: SharedArrayBuffer;
  private readonly descView: DataView;
  private readonly ring: UringCmdRing;
  private readonly watch: SourceWatch;
  private readonly registered: RegisteredBuffer | undefined;
  private readonly ends: Subscription | undefined;
  private readonly buffers: SharedArrayBuffer;
  /** Each tag's command (q_id, tag, result, addr), encoded once; only the result changes. */
  private readonly commands: Uint8Array[] = [];
  private readonly commandViews: DataView[] = [];
  /** By tag: the LBA and bytes of its read or write on registered memory, and whether it is a read. */
  private readonly lbas: Float64Array;
  private readonly bytes: Int32Array;
  private readonly isRead: Uint8Array;
  /** Tags the device had no room for, first in first out. */
  private readonly waiting: Int32Array;
  private waitHead = 0;
  private waitCount = 0;
  private submitQueued = false;
  private stopped = false;
  /** The device went away under a request: nothing more is served or answered. */
  private holding = false;
  private inFlight = 0;
  private aborted = 0;
  private readonly submitNow = () => {
    this.submitQueued = false;
    if (!this.stopped) this.ring.submit();
  };
  private readonly onCompletion = (tag: number, res: number) => this.arrived(tag, res);
  private readonly onEnd = (end: BlockEnd) => this.ended(end);

  /** Resolves when every tag was aborted: the disk was stopped. */
  readonly allAborted: Promise<void>;
  private abortedAll!: () => void;

  private constructor(private readonly device: BlockDevice, readonly options: UblkQueueOptions) {
    const { id, queueDepth, maxIoBytes } = options;
    this.allAborted = new Promise((resolve) => (this.abortedAll = resolve));
    this.lbas = new Float64Array(queueDepth);
    this.bytes = new Int32Array(queueDepth);
    this.isRead = new Uint8Array(queueDepth);
    this.waiting = new Int32Array(queueDepth);
    this.charFd = openSync(`/dev/ublkc${id}`, 'r+');
    this.unholdCharFd = holdFd(this.charFd);
    try {
      const descBytes = Math.ceil((queueDepth * abi.ublksrvIoDesc.size) / PAGE_SIZE) * PAGE_SIZE;
      this.descriptors = mapShared({ fd: this.charFd, fileOffset: abi.UBLKSRV_CMD_BUF_OFFSET, size: descBytes, writable: false });
      this.descView = new DataView(this.descriptors);
      this.registered = registeredMemory(device, queueDepth * maxIoBytes);
      this.buffers = this.registered?.bytes.buffer as SharedArrayBuffer | undefined ?? allocShared(queueDepth * maxIoBytes);
      const base = addressOf(this.buffers) + BigInt(this.registered?.bytes.byteOffset ?? 0);
      for (let tag = 0; tag < queueDepth; tag++) {
        const cmd = abi.ublksrvIoCmd.encode({ q_id: 0, tag, result: 0, addr: base + BigInt(tag * maxIoBytes) });
        this.commands.push(cmd);
        this.commandViews.push(new DataView(cmd.buffer, cmd.byteOffset, cmd.byteLength));
      }
      this.ends = this.registered?.ends.subscribe(this.onEnd);
      this.ring = new UringCmdRing(queueDepth, false);
    } catch (e) {
      this.registered?.unregister();
      this.unholdCharFd();
      closeSync(this.charFd);
      throw e;
    }
    this.watch = watchSource({ fd: this.ring.eventFd, format: 'counter', firstVector: 0, vectors: 1, owner: 'device' }, () => {
      this.ring.reap(this.onCompletion);
    });
  }

  /** Opens /dev/ublkcN's queue 0 and hands the kernel a FETCH for every tag: from here the disk's requests reach `device`. */
  static start(device: BlockDevice, options: UblkQueueOptions): UblkQueue {
    const queue = new UblkQueue(device, options);
    for (let tag = 0; tag < options.queueDepth; tag++) queue.ring.command(queue.charFd, abi.ops.UBLK_U_IO_FETCH_REQ, tag, queue.commands[tag]!);
    queue.ring.submit();
    return queue;
  }

  /** Whether requests are served through registered memory (no copy, no allocation) rather than the promise API. */
  get zeroCopy(): boolean {
    return this.registered !== undefined;
  }

  /** Requests with the device now. */
  get busy(): number {
    return this.inFlight;
  }

  private commit(tag: number, result: number): void {
    this.inFlight--;
    if (result < 0) this.stats.errors++;
    if (this.stopped) return;
    this.commandViews[tag]!.setInt32(4, result, true);
    // The ring has a slot per tag and each tag has at most one command outstanding.
    this.ring.command(this.charFd, abi.ops.UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, this.commands[tag]!);
    if (!this.submitQueued) {
      this.submitQueued = true;
      // One io_uring_enter for every commit made in this turn of the loop.
      queueMicrotask(this.submitNow);
    }
  }

  /** A FETCH (or COMMIT_AND_FETCH) completed: a request for `tag`, or the queue going away. */
  private arrived(tag: number, res: number): void {
    if (res !== abi.UBLK_IO_RES_OK) {
      // UBLK_IO_RES_ABORT: the disk is stopping; the tag is not fetched again.
      if (++this.aborted === this.options.queueDepth) this.abortedAll();
      return;
    }
    const at = tag * abi.ublksrvIoDesc.size;
    const view = this.descView;
    const op = view.getUint32(at, true) & 0xff;
    const sectors = view.getUint32(at + 4, true);
    const sector = Number(view.getBigUint64(at + 8, true));
    this.stats.requests++;
    this.inFlight++;
    if (this.holding) {
      this.stats.held++;
      return;
    }
    if (op === abi.UBLK_IO_OP_READ) this.stats.reads++;
    else if (op === abi.UBLK_IO_OP_WRITE) this.stats.writes++;
    else if (op === abi.UBLK_IO_OP_FLUSH) this.stats.flushes++;
    else if (op === abi.UBLK_IO_OP_DISCARD) this.stats.discards++;
    if (this.registered !== undefined && (op === abi.UBLK_IO_OP_READ || op === abi.UBLK_IO_OP_WRITE)) {
      this.startRegistered(tag, op, sector, sectors);
      return;
    }
    const { maxIoBytes } = this.options;
    serveUblkRequest(this.device, { op, sector, sectors }, new Uint8Array(this.buffers, tag * maxIoBytes, maxIoBytes)).then(
      (result) => this.commit(tag, result),
      (e: unknown) => this.failed(tag, e),
    );
  }

  /** A read or write on the tag's registered buffer: checked, then started (or queued while the device is full). */
  private startRegistered(tag: number, op: number, sector: number, sectors: number): void {
    const perBlock = this.device.blockSize / SECTOR;
    const lba = sector / perBlock;
    const blocks = sectors / perBlock;
    const { maxIoBytes } = this.options;
    // The kernel keeps to max_io_buf_bytes, so a request fits its tag's buffer; one that does not is refused.
    if (!Number.isInteger(lba) || !Number.isInteger(blocks) || sectors * SECTOR > maxIoBytes
      || !checkRequest.registeredOk(this.device, lba, blocks, tag * maxIoBytes, this.buffers.byteLength)) {
      this.commit(tag, -EIO);
      return;
    }
    this.lbas[tag] = lba;
    this.bytes[tag] = sectors * SECTOR;
    this.isRead[tag] = op === abi.UBLK_IO_OP_READ ? 1 : 0;
    if (!this.issue(tag)) {
      this.waiting[(this.waitHead + this.waitCount) % this.waiting.length] = tag;
      this.waitCount++;
    }
  }

  /** Starts the tag's request on the device; false when it had no room. */
  private issue(tag: number): boolean {
    const lba = this.lbas[tag]!;
    const blocks = this.bytes[tag]! / this.device.blockSize;
    const offset = tag * this.options.maxIoBytes;
    try {
      return this.isRead[tag] === 1 ? this.registered!.read(lba, blocks, offset, tag) : this.registered!.write(lba, blocks, offset, tag);
    } catch (e) {
      this.failed(tag, e);
      return true;
    }
  }

  private ended(end: BlockEnd): void {
    const { tag, error } = end;
    if (error !== undefined) this.failed(tag, error);
    else this.commit(tag, this.bytes[tag]!);
    // A slot was freed: the oldest waiting request goes now.
    while (this.waitCount > 0 && !this.holding) {
      const next = this.waiting[this.waitHead]!;
      if (!this.issue(next)) break;
      this.waitHead = (this.waitHead + 1) % this.waiting.length;
      this.waitCount--;
    }
  }

  /** A request failed: with EIO, unless the device is gone, which the next incarnation answers. */
  private failed(tag: number, e: unknown): void {
    if (e instanceof BlockGoneError || this.stopped) {
      this.holding = true;
      this.stats.held++;
      return;
    }
    this.commit(tag, -EIO);
  }

  /**
   * Lets go of the queue: the ring (the kernel cancels its fetches, and
   * with user recovery holds the disk's requests, those taken here among
   * them, for the next queue), the descriptors' mapping and /dev/ublkcN,
   * and the buffers. Idempotent.
   */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.watch.unwatch();
    this.ring.close();
    this.ends?.unsubscribe();
    // The kernel lets go of the disk (recovery, or DEL_DEV) only once nothing holds /dev/ublkcN: neither this fd nor
    // the descriptors' mapping, which the garbage collector would unmap only some time later.
    revoke(this.descriptors);
    this.unholdCharFd();
    closeSync(this.charFd);
    this.registered?.unregister();
  }
}

/** What the host's side of a queue served beside its device sends it. */
export type ToUblkQueue = { readonly type: 'start'; readonly options: UblkQueueOptions };
/** What the queue answers. */
export type FromUblkQueue =
  | { readonly type: 'fetching'; readonly zeroCopy: boolean }
  | { readonly type: 'failed'; readonly message: string };

/** What the host gets from a queue served beside its device: the device's geometry, and a port to start the queue on. */
export interface UblkBesideSetup {
  readonly geometry: UblkGeometry;
  readonly port: MessagePort;
}

/**
 * The queue beside a block device's provider (a BesideTask's module): hands
 * the host the device's geometry at once, starts the queue when the host
 * says (the disk made or its recovery begun), stops with the provider.
 */
export const serveBeside: ServeBeside<BlockDevice, undefined, UblkBesideSetup> = (device) => {
  const { port1: here, port2: there } = new MessageChannel();
  let queue: UblkQueue | undefined;
  here.on('message', (m: ToUblkQueue) => {
    if (m.type !== 'start' || queue !== undefined) return;
    try {
      queue = UblkQueue.start(device, m.options);
      here.postMessage({ type: 'fetching', zeroCopy: queue.zeroCopy } satisfies FromUblkQueue);
    } catch (e) {
      here.postMessage({ type: 'failed', message: e instanceof Error ? e.message : String(e) } satisfies FromUblkQueue);
    }
  });
  return {
    setup: { geometry: ublkGeometry(device), port: there },
    transfer: [there],
    stop: () => {
      queue?.stop();
      here.close();
    },
  };
};
