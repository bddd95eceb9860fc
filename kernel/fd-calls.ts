/**
 * The calls upci makes on the fds a kernel port hands out (interrupt
 * sources, kernel/port.ts IrqSource): a non-blocking read and close(2),
 * each with its OS's libc and errno values (kernel/libc.ts,
 * kernel/netbsd/libc.ts), chosen once by kernel/platform.ts as the kernel
 * port is (pci/kernel-port.ts), so the two cannot disagree.
 */
import * as linux from './libc.js';
import * as netbsd from './netbsd/libc.js';
import { hostPlatform, type Platform } from './platform.js';
import type { Operation } from './posix.js';

export interface FdCalls {
  /** read(2) of a non-blocking fd: bytes read, 0 at end of file, -1 when there is nothing (EAGAIN). */
  read(fd: number, buf: Buffer, what: Operation): number;
  /** close(2) of an fd the caller owns. */
  close(fd: number): void;
}

const calls: Readonly<Record<Platform, FdCalls>> = {
  linux: { read: linux.readSome, close: linux.close },
  netbsd: { read: netbsd.readSome, close: netbsd.close },
};

/** The fd calls of the OS this process runs on (an OS upci does not know is refused). */
export function fdCalls(): FdCalls {
  return calls[hostPlatform()];
}

/** close(2) of an fd the caller owns. */
export function closeFd(fd: number): void {
  fdCalls().close(fd);
}
