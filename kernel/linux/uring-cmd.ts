/**
 * An io_uring for passthrough commands (IORING_OP_URING_CMD) through the
 * native addon kernel/native/uring_cmd.cc: commands are queued, submitted
 * without waiting, and their completions reaped after the ring's eventfd
 * fired (the caller watches `eventFd` in its own event loop). What a command
 * means is the caller's (kernel/linux/ublk-abi.ts for ublk).
 */
import { loadNativeAddon } from '../native-addon.js';

interface UringCmdAddon {
  open(entries: number, sqe128: boolean): [number, number];
  command(ring: number, fd: number, cmdOp: number, userData: number, cmd: Uint8Array): boolean;
  submit(ring: number): number;
  reap(ring: number, out: Float64Array): number;
  close(ring: number): void;
}

const addon = loadNativeAddon<UringCmdAddon>('upci_uring', 'io_uring');

export interface UringCompletion {
  userData: number;
  /** The command's result: >= 0, or a negated errno. */
  res: number;
}

export class UringCmdRing {
  readonly eventFd: number;
  private readonly id: number;
  private readonly out: Float64Array;
  private closed = false;

  /**
   * `entries` submission slots (rounded up to a power of two by the kernel);
   * `sqe128` for commands longer than 16 bytes (up to 80: ublk's control commands).
   */
  constructor(entries: number, sqe128: boolean) {
    [this.id, this.eventFd] = addon.open(entries, sqe128);
    this.out = new Float64Array(2 * entries * 2);
  }

  /** Queues a command; false when the submission ring is full (submit() first). */
  command(fd: number, cmdOp: number, userData: number, cmd: Uint8Array): boolean {
    return addon.command(this.id, fd, cmdOp, userData, cmd);
  }

  /** Hands every queued command to the kernel; never waits for completions. */
  submit(): number {
    return addon.submit(this.id);
  }

  /** Calls `each` for every completion the ring holds, in order. */
  reap(each: (userData: number, res: number) => void): number {
    let total = 0;
    for (;;) {
      const n = addon.reap(this.id, this.out);
      for (let i = 0; i < n; i++) each(this.out[2 * i]!, this.out[2 * i + 1]!);
      total += n;
      if (2 * n < this.out.length) return total;
    }
  }

  /** Closes the ring: the kernel cancels what is still in flight. Idempotent; only by the thread that made it. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    addon.close(this.id);
  }
}
