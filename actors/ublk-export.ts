/**
 * Exports a BlockDevice to the OS as /dev/ublkbN through Linux's userspace
 * block driver (ublk_drv, Linux 6.0+): the kernel queues each request of the
 * disk in a descriptor area this process maps from /dev/ublkcN and completes
 * one of our FETCH commands on an io_uring; we serve it from the device and
 * answer with COMMIT_AND_FETCH, which also fetches the tag's next request.
 * Control (add, parameters, start, stop, delete) goes the same way on
 * /dev/ublk-control. Both rings' eventfds are watched by this thread's own
 * event loop (workers/interrupt-watcher.ts): nothing polls on a timer and no
 * other thread is involved.
 *
 * One queue, `queueDepth` tags, each with a data buffer of `maxIoBytes` in
 * one page-aligned SharedArrayBuffer (shm/mapping allocShared): the kernel
 * copies a write's data into it before the request reaches us, and a read's
 * data out of it after we commit; the BlockDevice reads into and writes from
 * it directly (DMA for the NVMe driver, by reference across threads).
 *
 * The kernel is the export's peer and is trusted to keep to the protocol,
 * but requests are still checked against the device: one past the end, or
 * not on a block boundary, is refused with EIO and never reaches the device.
 */
import { closeSync, openSync } from 'node:fs';
import { BlockGoneError, type BlockDevice } from '../drivers/block.js';
import { SyscallError, UpciError } from '../kernel/errors.js';
import * as abi from '../kernel/linux/ublk-abi.js';
import { UringCmdRing } from '../kernel/linux/uring-cmd.js';
import { addressOf, allocShared, mapShared, PAGE_SIZE, revoke } from '../shm/mapping.js';
import { watchSource, type SourceWatch } from '../workers/interrupt-watcher.js';

export interface UblkExportOptions {
  /** Requests the kernel may have in flight (tags). Default 64. */
  readonly queueDepth?: number;
  /** Bytes one request moves at most (the kernel splits larger ones). Default 256 KiB. */
  readonly maxIoBytes?: number;
  /** The N of /dev/ublkbN; default: the kernel picks the lowest free one. */
  readonly id?: number;
  /**
   * Where the device comes from again when it is gone (BlockGoneError: its
   * driver was restarted), e.g. `() => host.blockDevice('nvme0n1')`: the
   * requests it failed, and those arriving meanwhile, wait for it and are
   * issued to it, so the OS sees no error. Without it they fail with EIO.
   */
  readonly reacquire?: () => Promise<BlockDevice>;
}

export interface UblkExportStats {
  requests: number;
  /** Requests answered with an error (the device's, or refused here). */
  errors: number;
  reads: number;
  writes: number;
  flushes: number;
  discards: number;
}

const EIO = 5;
const EOPNOTSUPP = 95;
const SECTOR = 512;

/** /dev/ublk-control: async commands, each a promise of its result. */
class Control {
  private readonly fd: number;
  private readonly ring = new UringCmdRing(8, true);
  private readonly watch: SourceWatch;
  private readonly pending = new Map<number, (res: number) => void>();
  private next = 1;

  constructor() {
    try {
      this.fd = openSync('/dev/ublk-control', 'r+');
    } catch (cause) {
      this.ring.close();
      throw new UpciError(
        'NO_UBLK',
        `cannot open /dev/ublk-control: ${(cause as Error).message}`,
        'load the ublk_drv module (modprobe ublk_drv; Linux 6.0 or later built with CONFIG_BLK_DEV_UBLK) and run as root, or export through NBD instead',
        { cause },
      );
    }
    this.watch = watchSource({ fd: this.ring.eventFd, format: 'counter', firstVector: 0, vectors: 1, owner: 'device' }, () => {
      this.ring.reap((userData, res) => {
        const done = this.pending.get(userData);
        this.pending.delete(userData);
        done?.(res);
      });
    });
  }

  /** Sends one control command; resolves with its result (>= 0) or rejects naming it and the errno. */
  send(what: string, op: number, devId: number, fields: { addr?: bigint; len?: number; data?: bigint } = {}): Promise<number> {
    const cmd = abi.ublksrvCtrlCmd.encode({
      dev_id: devId >>> 0, queue_id: 0xffff, len: fields.len ?? 0, addr: fields.addr ?? 0n, 'data[0]': fields.data ?? 0n,
    });
    const userData = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(userData, (res) => {
        if (res >= 0) resolve(res);
        else reject(new SyscallError(`ublk ${what}`, -res, 'see the kernel log (dmesg) for ublk_drv\'s reason'));
      });
      if (!this.ring.command(this.fd, op, userData, cmd)) {
        this.pending.delete(userData);
        reject(new Error('ublk control ring full'));
        return;
      }
      this.ring.submit();
    });
  }

  close(): void {
    this.watch.unwatch();
    this.ring.close();
    closeSync(this.fd);
  }
}

/** One request as ublk's descriptor gives it: sectors are 512 bytes whatever the device's block size. */
export interface UblkRequest {
  readonly op: number;
  readonly sector: number;
  readonly sectors: number;
}

/**
 * Serves one request from `device`, with `buffer` the tag's data buffer
 * (a write's data, where a read's goes): resolves with the bytes moved
 * (reads, writes), 0, or a negated errno. What the device cannot take (past
 * its end, off its block boundary, larger than the buffer, an operation it
 * lacks) is answered here and never reaches it.
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

export class UblkExport {
  readonly stats: UblkExportStats = { requests: 0, errors: 0, reads: 0, writes: 0, flushes: 0, discards: 0 };
  private closing: Promise<void> | undefined;
  private ioRing: UringCmdRing | undefined;
  private ioWatch: SourceWatch | undefined;
  private charFd = -1;
  private descriptors: SharedArrayBuffer | undefined;
  private descView: DataView | undefined;
  private buffers!: SharedArrayBuffer;
  private bufferBase = 0n;
  private submitQueued = false;
  /** Tags whose request is with the device, for close() to wait for. */
  private inFlight = 0;
  private drained: (() => void) | undefined;

  /** Requests issued again to a new device after the one they went to was gone. */
  reissued = 0;
  /** The device being fetched again, while the one before is gone. */
  private replacing: Promise<BlockDevice> | undefined;

  private constructor(
    private device: BlockDevice,
    private readonly reacquire: (() => Promise<BlockDevice>) | undefined,
    private readonly control: Control,
    readonly id: number,
    readonly queueDepth: number,
    readonly maxIoBytes: number,
  ) {}

  /** The block device node the OS uses. */
  get path(): string {
    return `/dev/ublkb${this.id}`;
  }

  /**
   * Adds /dev/ublkbN for `device`, starts serving it and resolves once the
   * kernel has the disk (its partition scan already served through us).
   */
  static async open(device: BlockDevice, options: UblkExportOptions = {}): Promise<UblkExport> {
    const queueDepth = options.queueDepth ?? 64;
    const maxIoBytes = options.maxIoBytes ?? 256 * 1024;
    if (!Number.isInteger(queueDepth) || queueDepth < 1 || queueDepth > abi.UBLK_MAX_QUEUE_DEPTH) {
      throw new UpciError('BAD_CONFIG', `ublk queueDepth ${queueDepth} is not an integer in 1..${abi.UBLK_MAX_QUEUE_DEPTH}`, 'pass a queue depth such as 64');
    }
    if (!Number.isInteger(maxIoBytes) || maxIoBytes < PAGE_SIZE || maxIoBytes % PAGE_SIZE !== 0 || maxIoBytes % device.blockSize !== 0) {
      throw new UpciError('BAD_CONFIG', `ublk maxIoBytes ${maxIoBytes} is not a multiple of the page size and of ${device.name}'s ${device.blockSize}-byte blocks`, 'pass a size such as 262144');
    }
    const shift = Math.log2(device.blockSize);
    if (!Number.isInteger(shift) || shift < 9 || shift > 12) {
      throw new UpciError('BAD_CONFIG', `${device.name}'s block size ${device.blockSize} cannot be a ublk disk's`, 'ublk takes logical blocks of 512 to 4096 bytes (a power of two)');
    }
    const control = new Control();
    let added: UblkExport | undefined;
    try {
      const info = allocShared(PAGE_SIZE);
      const infoBuf = Buffer.from(info, 0, abi.ublksrvCtrlDevInfo.size);
      const requested = options.id ?? -1;
      abi.ublksrvCtrlDevInfo.encode({}).copy(infoBuf);
      abi.ublksrvCtrlDevInfo.set(infoBuf, 'nr_hw_queues', 1);
      abi.ublksrvCtrlDevInfo.set(infoBuf, 'queue_depth', queueDepth);
      abi.ublksrvCtrlDevInfo.set(infoBuf, 'max_io_buf_bytes', maxIoBytes);
      abi.ublksrvCtrlDevInfo.set(infoBuf, 'dev_id', requested >>> 0);
      abi.ublksrvCtrlDevInfo.set(infoBuf, 'ublksrv_pid', process.pid);
      await control.send('ADD_DEV', abi.ops.UBLK_U_CMD_ADD_DEV, requested, { addr: addressOf(info), len: abi.ublksrvCtrlDevInfo.size });
      const id = abi.ublksrvCtrlDevInfo.get(infoBuf, 'dev_id');
      added = new UblkExport(device, options.reacquire, control, id, queueDepth, maxIoBytes);

      const params = allocShared(PAGE_SIZE);
      const p = Buffer.from(params, 0, abi.ublkParams.size);
      const set = <K extends keyof typeof abi.ublkParams.fields>(k: K, v: number | bigint) => abi.ublkParams.set(p, k, v as never);
      set('len', abi.UBLK_PARAMS_LEN);
      set('types', abi.UBLK_PARAM_TYPE_BASIC | (device.canDiscard ? abi.UBLK_PARAM_TYPE_DISCARD : 0));
      // A volatile cache: the kernel then sends flushes, which reach the device's own.
      set('basic.attrs', abi.UBLK_ATTR_VOLATILE_CACHE);
      set('basic.logical_bs_shift', shift);
      set('basic.physical_bs_shift', shift);
      set('basic.io_min_shift', shift);
      set('basic.io_opt_shift', shift);
      set('basic.max_sectors', maxIoBytes / SECTOR);
      set('basic.dev_sectors', BigInt(device.blockCount) * BigInt(device.blockSize / SECTOR));
      if (device.canDiscard) {
        set('discard.discard_granularity', device.blockSize);
        set('discard.max_discard_sectors', Math.min(0xffffffff, device.blockCount * (device.blockSize / SECTOR)) >>> 0);
        set('discard.max_discard_segments', 1);
      }
      await control.send('SET_PARAMS', abi.ops.UBLK_U_CMD_SET_PARAMS, id, { addr: addressOf(params), len: abi.UBLK_PARAMS_LEN });

      added.startQueue();
      // START_DEV returns once the disk is added, which reads its partition table through us.
      await control.send('START_DEV', abi.ops.UBLK_U_CMD_START_DEV, id, { data: BigInt(process.pid) });
      return added;
    } catch (e) {
      if (added !== undefined) await added.close().catch(() => undefined);
      else control.close();
      throw e;
    }
  }

  /** Opens /dev/ublkcN, maps its descriptors and hands the kernel a FETCH for every tag. */
  private startQueue(): void {
    this.charFd = openSync(`/dev/ublkc${this.id}`, 'r+');
    const descBytes = Math.ceil((this.queueDepth * abi.ublksrvIoDesc.size) / PAGE_SIZE) * PAGE_SIZE;
    this.descriptors = mapShared({ fd: this.charFd, fileOffset: abi.UBLKSRV_CMD_BUF_OFFSET, size: descBytes, writable: false });
    this.descView = new DataView(this.descriptors);
    this.buffers = allocShared(this.queueDepth * this.maxIoBytes);
    this.bufferBase = addressOf(this.buffers);
    const ring = new UringCmdRing(this.queueDepth, false);
    this.ioRing = ring;
    this.ioWatch = watchSource({ fd: ring.eventFd, format: 'counter', firstVector: 0, vectors: 1, owner: 'device' }, () => {
      ring.reap((tag, res) => this.arrived(tag, res));
    });
    for (let tag = 0; tag < this.queueDepth; tag++) this.queueCommand(abi.ops.UBLK_U_IO_FETCH_REQ, tag, 0);
    ring.submit();
  }

  private queueCommand(op: number, tag: number, result: number): void {
    const cmd = abi.ublksrvIoCmd.encode({ q_id: 0, tag, result: result >>> 0, addr: this.bufferBase + BigInt(tag * this.maxIoBytes) });
    // The ring has a slot per tag and each tag has at most one command outstanding.
    this.ioRing!.command(this.charFd, op, tag, cmd);
    if (!this.submitQueued) {
      this.submitQueued = true;
      // One io_uring_enter for every commit made in this turn of the loop.
      queueMicrotask(() => {
        this.submitQueued = false;
        this.ioRing?.submit();
      });
    }
  }

  /** A FETCH (or COMMIT_AND_FETCH) completed: a request for `tag`, or the queue going away. */
  private arrived(tag: number, res: number): void {
    if (res !== abi.UBLK_IO_RES_OK) return; // UBLK_IO_RES_ABORT: the device is stopping; the tag is not fetched again
    const at = tag * abi.ublksrvIoDesc.size;
    const view = this.descView!;
    const opFlags = view.getUint32(at, true);
    const sectors = view.getUint32(at + 4, true);
    const sector = Number(view.getBigUint64(at + 8, true));
    const op = opFlags & 0xff;
    this.stats.requests++;
    if (op === abi.UBLK_IO_OP_READ) this.stats.reads++;
    else if (op === abi.UBLK_IO_OP_WRITE) this.stats.writes++;
    else if (op === abi.UBLK_IO_OP_FLUSH) this.stats.flushes++;
    else if (op === abi.UBLK_IO_OP_DISCARD) this.stats.discards++;
    this.inFlight++;
    this.issue({ op, sector, sectors }, new Uint8Array(this.buffers, tag * this.maxIoBytes, this.maxIoBytes)).then(
      (result) => this.complete(tag, result),
      () => this.complete(tag, -EIO),
    );
  }

  /**
   * Serves a request on the current device; when that device is gone and the
   * export can reacquire one, waits for the new one (one fetch for every
   * request that found it gone) and issues the request there again. Each
   * request is idempotent (a write puts the same data in the same place).
   */
  private async issue(request: UblkRequest, buffer: Uint8Array): Promise<number> {
    for (;;) {
      const device = this.replacing === undefined ? this.device : await this.replacing;
      try {
        return await serveUblkRequest(device, request, buffer);
      } catch (e) {
        if (!(e instanceof BlockGoneError) || this.reacquire === undefined || this.closing !== undefined) throw e;
        this.reissued++;
        if (this.device === device && this.replacing === undefined) this.replacing = this.replace(device);
      }
    }
  }

  private async replace(gone: BlockDevice): Promise<BlockDevice> {
    try {
      const next = await this.reacquire!();
      if (next.blockSize !== gone.blockSize || next.blockCount !== gone.blockCount) {
        throw new UpciError('KERNEL', `${gone.name} came back as ${next.blockCount} blocks of ${next.blockSize} bytes, not ${gone.blockCount} of ${gone.blockSize}`, 'export the device again: /dev/ublkbN keeps the geometry it was made with');
      }
      this.device = next;
      return next;
    } finally {
      this.replacing = undefined;
    }
  }

  private complete(tag: number, result: number): void {
    if (result < 0) this.stats.errors++;
    this.inFlight--;
    if (this.ioRing !== undefined) this.queueCommand(abi.ops.UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, result);
    if (this.inFlight === 0) this.drained?.();
  }

  /**
   * Removes /dev/ublkbN: the kernel stops the disk (writing back what it
   * caches, through us), the queue lets go of its tags, and the device is
   * deleted. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    if (this.ioRing !== undefined) {
      await this.control.send('STOP_DEV', abi.ops.UBLK_U_CMD_STOP_DEV, this.id);
      if (this.inFlight > 0) await new Promise<void>((resolve) => (this.drained = resolve));
      this.ioWatch?.unwatch();
      // Closing the ring cancels the tags' FETCH commands.
      this.ioRing.close();
      this.ioRing = undefined;
    }
    // DEL_DEV waits until nothing holds /dev/ublkcN: neither the fd nor the descriptors' mapping
    // (which the garbage collector would unmap only some time later).
    if (this.descriptors !== undefined) revoke(this.descriptors);
    if (this.charFd >= 0) closeSync(this.charFd);
    this.charFd = -1;
    try {
      await this.control.send('DEL_DEV', abi.ops.UBLK_U_CMD_DEL_DEV, this.id);
    } finally {
      this.control.close();
    }
  }
}
