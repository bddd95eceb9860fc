/**
 * The fd the interrupt hub writes to wake its worker out of the event queue:
 * an eventfd on Linux, a pipe where there is none (NetBSD). The worker drains
 * it like any readable fd (read until a short read); only its creator writes
 * to it and closes it.
 */
import * as libc from '../kernel/libc.js';
import type { Operation } from '../kernel/posix.js';

export interface Wakeable {
  /** The end to watch for readability. */
  readonly fd: number;
  /** Makes `fd` readable (again); never blocks. */
  wake(): void;
  close(): void;
}

/** Linux: one eventfd; each wake() adds 1 to its counter, one read(2) resets it. */
export function eventfdWakeable(): Wakeable {
  const fd = libc.eventfd(libc.EFD_NONBLOCK);
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n);
  return {
    fd,
    wake: () => libc.writeAll(fd, one, 'write of the interrupt worker wake-up eventfd'),
    close: () => libc.close(fd),
  };
}

/** The POSIX calls a pipe wake-up needs, with the OS's O_NONBLOCK (Linux and NetBSD differ). */
export interface PipeCalls {
  readonly O_NONBLOCK: number;
  pipe(flags: number): [number, number];
  writeSome(fd: number, buf: Buffer, what: Operation): number;
  close(fd: number): void;
}

/**
 * A non-blocking pipe: wake() writes one byte to the write end; a full pipe
 * (EAGAIN) is already readable, so that write is simply dropped.
 */
export function pipeWakeable(sys: PipeCalls): Wakeable {
  const [readEnd, writeEnd] = sys.pipe(sys.O_NONBLOCK);
  const byte = Buffer.alloc(1, 1);
  return {
    fd: readEnd,
    wake: () => void sys.writeSome(writeEnd, byte, 'write of the interrupt worker wake-up pipe'),
    close: () => {
      sys.close(writeEnd);
      sys.close(readEnd);
    },
  };
}
