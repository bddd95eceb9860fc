/**
 * The system calls the NetBSD port makes: the shared POSIX ones bound to
 * NetBSD's libc.so on first use (kernel/posix.ts), so importing the NetBSD
 * port (or kernel/fd-calls.ts) on Linux costs nothing. Values are NetBSD's
 * (sys/fcntl.h, sys/errno.h), not Linux's.
 */
import koffi from 'koffi';
import { posix } from '../posix.js';

export const O_RDWR = 0x00000002;
export const O_NONBLOCK = 0x00000004;
export const O_CLOEXEC = 0x00400000;

export const EPERM = 1;
export const ENOENT = 2;
export const EINTR = 4;
export const ENXIO = 6;
export const EACCES = 13;
export const EBUSY = 16;
export const ENODEV = 19;
export const ENOTTY = 25;
/** EWOULDBLOCK too; Linux's is 11. */
export const EAGAIN = 35;
/** Linux's is 95. */
export const EOPNOTSUPP = 45;
/** pciuser(4)'s DMA caps (hw.pciuser.dma_file_max, dma_total_max); Linux's is 122. */
export const EDQUOT = 69;

const sys = posix('libc.so', { O_CLOEXEC, EAGAIN, EINTR });
export const { errno, open, close, ioctlBuffer, ioctlValue, readSome } = sys;

/** The address of a Buffer's bytes, for ioctl structs that point at user memory (Node never moves them). */
export function address(buf: Buffer): bigint {
  return koffi.address(buf);
}
