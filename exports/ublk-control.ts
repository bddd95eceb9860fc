/**
 * The control side of a ublk disk (Linux's userspace block driver, ublk_drv,
 * Linux 6.0+): commands on /dev/ublk-control that add /dev/ublkbN, give it
 * its geometry, start it, stop and delete it, and take it over again after
 * the process serving its queue died (user recovery). The queue itself, the
 * requests, are exports/ublk-queue.ts's, and may run in another thread.
 *
 * Every disk upci adds asks for user recovery with re-issue: when the task
 * serving its queue goes away (a driver thread restarted, the whole host
 * killed), the kernel keeps /dev/ublkbN, holds new requests, requeues those
 * that task had taken, and issues them all to whoever takes the queue over
 * (startRecovery(), a queue, endRecovery()). The OS sees a pause, not an
 * error. Each disk carries a tag of its own (ublksrv_flags, which the kernel
 * keeps and never reads) so that a later `upci run` finds the disk of the
 * same export among the others (find()).
 */
import { closeSync, openSync, readdirSync } from 'node:fs';
import type { BlockGeometry } from '../drivers/block.js';
import { SyscallError, UpciError } from '../kernel/errors.js';
import * as abi from '../kernel/linux/ublk-abi.js';
import { UringCmdRing } from '../kernel/linux/uring-cmd.js';
import { addressOf, allocShared, PAGE_SIZE } from '../shm/mapping.js';
import { watchSource, type SourceWatch } from '../kernel/interrupt-watcher.js';

const SECTOR = 512;
const EBUSY = 16;

/** What a ublk disk is made from: its device's geometry. */
export interface UblkGeometry extends Pick<BlockGeometry, 'name' | 'blockSize' | 'blockCount' | 'canDiscard'> {
  /** Bytes one request may move (the kernel splits larger ones). */
  readonly maxIoBytes: number;
}

export interface UblkDiskInfo {
  readonly id: number;
  readonly state: number;
  readonly queueDepth: number;
  readonly maxIoBytes: number;
  readonly ublksrvPid: number;
  readonly tag: bigint;
}

/** /dev/ublk-control: async commands, each a promise of its result. */
export class UblkControl {
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
        else reject(new SyscallError(`ublk ${what} of /dev/ublkb${devId}`, -res, 'see the kernel log (dmesg) for ublk_drv\'s reason'));
      });
      if (!this.ring.command(this.fd, op, userData, cmd)) {
        this.pending.delete(userData);
        reject(new Error('ublk control ring full'));
        return;
      }
      this.ring.submit();
    });
  }

  /** The disk `id`'s info, or undefined when there is none (ENODEV). */
  async info(id: number): Promise<UblkDiskInfo | undefined> {
    const memory = allocShared(PAGE_SIZE);
    const buf = Buffer.from(memory, 0, abi.ublksrvCtrlDevInfo.size);
    try {
      await this.send('GET_DEV_INFO', abi.ops.UBLK_U_CMD_GET_DEV_INFO, id, { addr: addressOf(memory), len: abi.ublksrvCtrlDevInfo.size });
    } catch (e) {
      if (e instanceof SyscallError && e.errno === 19) return undefined;
      throw e;
    }
    const get = (k: keyof typeof abi.ublksrvCtrlDevInfo.fields) => abi.ublksrvCtrlDevInfo.get(buf, k);
    return {
      id, state: Number(get('state')), queueDepth: Number(get('queue_depth')), maxIoBytes: Number(get('max_io_buf_bytes')),
      ublksrvPid: Number(get('ublksrv_pid')), tag: BigInt(get('ublksrv_flags')),
    };
  }

  close(): void {
    this.watch.unwatch();
    this.ring.close();
    closeSync(this.fd);
  }
}

/** A ublk disk this process made or took over: its control commands. */
export class UblkDisk {
  private constructor(
    private readonly control: UblkControl,
    readonly id: number,
    readonly queueDepth: number,
    readonly maxIoBytes: number,
  ) {}

  get path(): string {
    return `/dev/ublkb${this.id}`;
  }

  /**
   * A new disk of `geometry`, with user recovery, tagged `tag`: added and
   * given its parameters, not started (start() once a queue fetches).
   */
  static async add(control: UblkControl, geometry: UblkGeometry, options: { id?: number; queueDepth: number; tag: bigint }): Promise<UblkDisk> {
    const { queueDepth } = options;
    const maxIoBytes = geometry.maxIoBytes;
    const shift = Math.log2(geometry.blockSize);
    if (!Number.isInteger(shift) || shift < 9 || shift > 12) {
      throw new UpciError('BAD_CONFIG', `${geometry.name}'s block size ${geometry.blockSize} cannot be a ublk disk's`, 'ublk takes logical blocks of 512 to 4096 bytes (a power of two)');
    }
    if (!Number.isInteger(maxIoBytes) || maxIoBytes < PAGE_SIZE || maxIoBytes % PAGE_SIZE !== 0 || maxIoBytes % geometry.blockSize !== 0) {
      throw new UpciError('BAD_CONFIG', `ublk maxIoBytes ${maxIoBytes} is not a multiple of the page size and of ${geometry.name}'s ${geometry.blockSize}-byte blocks`, 'pass a size such as 262144');
    }
    const info = allocShared(PAGE_SIZE);
    const infoBuf = Buffer.from(info, 0, abi.ublksrvCtrlDevInfo.size);
    const requested = options.id ?? -1;
    abi.ublksrvCtrlDevInfo.encode({}).copy(infoBuf);
    abi.ublksrvCtrlDevInfo.set(infoBuf, 'nr_hw_queues', 1);
    abi.ublksrvCtrlDevInfo.set(infoBuf, 'queue_depth', queueDepth);
    abi.ublksrvCtrlDevInfo.set(infoBuf, 'max_io_buf_bytes', maxIoBytes);
    abi.ublksrvCtrlDevInfo.set(infoBuf, 'dev_id', requested >>> 0);
    abi.ublksrvCtrlDevInfo.set(infoBuf, 'ublksrv_pid', process.pid);
    abi.ublksrvCtrlDevInfo.set(infoBuf, 'flags', BigInt(abi.UBLK_F_USER_RECOVERY | abi.UBLK_F_USER_RECOVERY_REISSUE));
    abi.ublksrvCtrlDevInfo.set(infoBuf, 'ublksrv_flags', options.tag);
    await control.send('ADD_DEV', abi.ops.UBLK_U_CMD_ADD_DEV, requested, { addr: addressOf(info), len: abi.ublksrvCtrlDevInfo.size });
    const id = Number(abi.ublksrvCtrlDevInfo.get(infoBuf, 'dev_id'));
    const disk = new UblkDisk(control, id, queueDepth, maxIoBytes);
    // The kernel drops the flags it does not know: without recovery a driver restart would stop the disk.
    const granted = Number(BigInt(abi.ublksrvCtrlDevInfo.get(infoBuf, 'flags')) & BigInt(abi.UBLK_F_USER_RECOVERY | abi.UBLK_F_USER_RECOVERY_REISSUE));
    if (granted !== (abi.UBLK_F_USER_RECOVERY | abi.UBLK_F_USER_RECOVERY_REISSUE)) {
      await disk.delete().catch(() => undefined);
      throw new UpciError('NO_UBLK', `this kernel's ublk_drv does not offer user recovery with re-issue (flags granted: 0x${granted.toString(16)})`, 'use Linux 6.0 or later, or export through NBD');
    }
    try {
      await disk.setParams(geometry, shift);
    } catch (e) {
      await disk.delete().catch(() => undefined);
      throw e;
    }
    return disk;
  }

  /**
   * The disk tagged `tag` that waits for its queue to be taken over (its
   * server died), if there is one: `id` when given, else any /dev/ublkcN.
   * A disk of the tag whose geometry no longer fits `geometry` is an error:
   * the OS holds it with the old one.
   */
  static async find(control: UblkControl, tag: bigint, geometry: UblkGeometry, id?: number): Promise<UblkDisk | undefined> {
    const ids = id !== undefined ? [id] : readdirSync('/dev').flatMap((f) => (/^ublkc(\d+)$/.exec(f) ? [Number(f.slice(5))] : []));
    for (const candidate of ids) {
      const info = await control.info(candidate);
      if (info === undefined || info.tag !== tag) continue;
      if (info.state === abi.UBLK_S_DEV_DEAD) {
        // Added and never started, or stopped and never deleted, by a host that died: nothing to take over.
        await new UblkDisk(control, candidate, info.queueDepth, info.maxIoBytes).delete();
        continue;
      }
      if (info.state === abi.UBLK_S_DEV_LIVE && processAlive(info.ublksrvPid)) {
        throw new UpciError('BUSY', `/dev/ublkb${candidate} is this export's disk, and process ${info.ublksrvPid} still serves it`, 'stop the other upci run serving this config first');
      }
      if (info.maxIoBytes !== geometry.maxIoBytes) {
        throw new UpciError('KERNEL', `/dev/ublkb${candidate} was made for ${info.maxIoBytes}-byte requests, ${geometry.name} now takes ${geometry.maxIoBytes}`, `delete it (ublk del -n ${candidate}, or stop the export cleanly) and export again`);
      }
      return new UblkDisk(control, candidate, info.queueDepth, info.maxIoBytes);
    }
    return undefined;
  }

  private async setParams(geometry: UblkGeometry, shift: number): Promise<void> {
    const params = allocShared(PAGE_SIZE);
    const p = Buffer.from(params, 0, abi.ublkParams.size);
    const set = <K extends keyof typeof abi.ublkParams.fields>(k: K, v: number | bigint) => abi.ublkParams.set(p, k, v as never);
    set('len', abi.UBLK_PARAMS_LEN);
    set('types', abi.UBLK_PARAM_TYPE_BASIC | (geometry.canDiscard ? abi.UBLK_PARAM_TYPE_DISCARD : 0));
    // A volatile cache: the kernel then sends flushes, which reach the device's own.
    set('basic.attrs', abi.UBLK_ATTR_VOLATILE_CACHE);
    set('basic.logical_bs_shift', shift);
    set('basic.physical_bs_shift', shift);
    set('basic.io_min_shift', shift);
    set('basic.io_opt_shift', shift);
    set('basic.max_sectors', this.maxIoBytes / SECTOR);
    set('basic.dev_sectors', BigInt(geometry.blockCount) * BigInt(geometry.blockSize / SECTOR));
    if (geometry.canDiscard) {
      set('discard.discard_granularity', geometry.blockSize);
      set('discard.max_discard_sectors', Math.min(0xffffffff, geometry.blockCount * (geometry.blockSize / SECTOR)) >>> 0);
      set('discard.max_discard_segments', 1);
    }
    await this.control.send('SET_PARAMS', abi.ops.UBLK_U_CMD_SET_PARAMS, this.id, { addr: addressOf(params), len: abi.UBLK_PARAMS_LEN });
  }

  /** Starts the disk once its queue fetches: resolves when the kernel has it (its partition scan served). */
  async start(): Promise<void> {
    await this.control.send('START_DEV', abi.ops.UBLK_U_CMD_START_DEV, this.id, { data: BigInt(process.pid) });
  }

  /**
   * Begins taking the queue over from a server that went away. The kernel
   * refuses (EBUSY) until it has let go of the old one (its io_uring and
   * /dev/ublkcN closed, the disk quiesced): `ready()` resolves when that may
   * have changed (the old server's thread ended), and is asked again.
   */
  async startRecovery(ready: () => Promise<void>, attempts: number): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.control.send('START_USER_RECOVERY', abi.ops.UBLK_U_CMD_START_USER_RECOVERY, this.id);
        return;
      } catch (e) {
        if (!(e instanceof SyscallError) || e.errno !== EBUSY || attempt >= attempts) throw e;
        await ready();
      }
    }
  }

  /** Ends the takeover once the new queue fetches: the held requests go to it. */
  async endRecovery(): Promise<void> {
    await this.control.send('END_USER_RECOVERY', abi.ops.UBLK_U_CMD_END_USER_RECOVERY, this.id, { data: BigInt(process.pid) });
  }

  /** Stops the disk: the kernel writes back what it caches (through the queue) and aborts the queue's fetches. */
  async stop(): Promise<void> {
    await this.control.send('STOP_DEV', abi.ops.UBLK_U_CMD_STOP_DEV, this.id);
  }

  /** Deletes the disk; completes once nothing holds /dev/ublkcN (the queue's fd and mapping closed). */
  async delete(): Promise<void> {
    await this.control.send('DEL_DEV', abi.ops.UBLK_U_CMD_DEL_DEV, this.id);
  }
}

function processAlive(pid: number): boolean {
  if (pid <= 0 || pid === process.pid) return pid === process.pid;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
