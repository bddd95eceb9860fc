/**
 * The system calls the NetBSD port makes, bound through koffi on first use.
 * kernel/libc.ts binds Linux's libc.so.6 when it is imported, which NetBSD
 * lacks; this module binds NetBSD's libc.so only when a call is made, so
 * importing the NetBSD port (or workers/kqueue.ts) on Linux costs nothing.
 * Values are NetBSD's (sys/fcntl.h, sys/errno.h), not Linux's.
 */
import koffi, { type LibraryHandle } from 'koffi';
import { SyscallError } from '../errors.js';

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

let lib: LibraryHandle | undefined;

/** NetBSD's libc, loaded on the first call (also used by workers/kqueue.ts). */
export function libc(): LibraryHandle {
  return (lib ??= koffi.load('libc.so'));
}

let bound: ReturnType<typeof bind> | undefined;

function bind() {
  const l = libc();
  return {
    open: l.func('int open(const char *path, int flags, int mode)'),
    close: l.func('int close(int fd)'),
    ioctl: l.func('int ioctl(int fd, unsigned long request, ...)'),
    read: l.func('intptr_t read(int fd, _Out_ uint8_t *buf, size_t count)'),
  };
}

const c = () => (bound ??= bind());

/** The address of a Buffer's bytes, for ioctl structs that point at user memory (Node never moves them). */
export function address(buf: Buffer): bigint {
  return koffi.address(buf);
}

export function errno(): number {
  return koffi.errno();
}

/** open(2), always close-on-exec; throws SyscallError with NetBSD's errno. */
export function open(path: string, flags: number): number {
  const fd = c().open(path, flags | O_CLOEXEC, 0) as number;
  if (fd < 0) throw new SyscallError(`open ${path}`, errno());
  return fd;
}

export function close(fd: number): void {
  c().close(fd);
}

/** ioctl(2) with an argument struct in `arg` (read and written in place). */
export function ioctlBuffer(fd: number, request: number, arg: Buffer, what: string): void {
  if ((c().ioctl(fd, request, 'uint8_t *', arg) as number) < 0) throw new SyscallError(what, errno());
}

/** ioctl(2) without an argument (_IO). */
export function ioctlVoid(fd: number, request: number, what: string): void {
  if ((c().ioctl(fd, request, 'unsigned long', 0) as number) < 0) throw new SyscallError(what, errno());
}

/** read(2): bytes read, 0 at end of file, -1 when a non-blocking fd has nothing (EAGAIN). */
export function readSome(fd: number, buf: Buffer, what: string): number {
  const n = c().read(fd, buf, buf.length) as number;
  if (n >= 0) return n;
  const e = errno();
  if (e === EAGAIN) return -1;
  throw new SyscallError(what, e);
}
