/**
 * A BlockDevice as /dev/ublkbN, for a program that holds the device in its
 * own thread: the disk (exports/ublk-control.ts) and its queue
 * (exports/ublk-queue.ts) together, here. The host's config exports do the
 * same with the queue beside the device's provider (actors/exports.ts).
 */
import type { BlockDevice } from '../drivers/block.js';
import { UpciError } from '../kernel/errors.js';
import { UblkControl, UblkDisk } from './ublk-control.js';
import { ublkGeometry, UblkQueue, type UblkQueueStats } from './ublk-queue.js';
import * as abi from '../kernel/linux/ublk-abi.js';

export interface UblkExportOptions {
  /** Requests the kernel may have in flight (tags). Default 64. */
  readonly queueDepth?: number;
  /** The N of /dev/ublkbN; default: the kernel picks the lowest free one. */
  readonly id?: number;
}

export class UblkExport {
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly control: UblkControl,
    private readonly disk: UblkDisk,
    private readonly queue: UblkQueue,
  ) {}

  get id(): number {
    return this.disk.id;
  }

  /** The block device node the OS uses. */
  get path(): string {
    return this.disk.path;
  }

  get stats(): UblkQueueStats {
    return this.queue.stats;
  }

  /** Whether requests reach the device through registered memory (no copy, no map). */
  get zeroCopy(): boolean {
    return this.queue.zeroCopy;
  }

  /**
   * Adds /dev/ublkbN for `device`, starts serving it and resolves once the
   * kernel has the disk (its partition scan already served through us).
   */
  static async open(device: BlockDevice, options: UblkExportOptions = {}): Promise<UblkExport> {
    const queueDepth = options.queueDepth ?? 64;
    if (!Number.isInteger(queueDepth) || queueDepth < 1 || queueDepth > abi.UBLK_MAX_QUEUE_DEPTH) {
      throw new UpciError('BAD_CONFIG', `ublk queueDepth ${queueDepth} is not an integer in 1..${abi.UBLK_MAX_QUEUE_DEPTH}`, 'pass a queue depth such as 64');
    }
    const control = new UblkControl();
    let disk: UblkDisk | undefined;
    let queue: UblkQueue | undefined;
    try {
      // A private tag: nobody takes this disk over, it goes with close().
      disk = await UblkDisk.add(control, ublkGeometry(device), { ...(options.id === undefined ? {} : { id: options.id }), queueDepth, tag: 0n });
      queue = UblkQueue.start(device, { id: disk.id, queueDepth, maxIoBytes: disk.maxIoBytes });
      // START_DEV returns once the disk is added, which reads its partition table through us.
      await disk.start();
      return new UblkExport(control, disk, queue);
    } catch (e) {
      queue?.stop();
      await disk?.delete().catch(() => undefined);
      control.close();
      throw e;
    }
  }

  /**
   * Removes /dev/ublkbN: the kernel stops the disk (writing back what it
   * caches, through us), the queue lets go of its tags, and the device is
   * deleted. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      try {
        await this.disk.stop();
      } finally {
        this.queue.stop();
        try {
          await this.disk.delete();
        } finally {
          this.control.close();
        }
      }
    })();
    return this.closing;
  }
}
