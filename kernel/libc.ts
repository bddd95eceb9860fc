/**
 * The Linux system calls upci makes, bound once through koffi. Only kernel/ and
 * workers/ import this module; drivers never do.
 */
import koffi from 'koffi';
import { SyscallError } from './errors.js';

function bind() {
  const libc = koffi.load('libc.so.6');
  return {
    open: libc.func('int open(const char *path, int flags, int mode)'),
    close: libc.func('int close(int fd)'),
    // Two fixed prototypes rather than koffi's variadic call, which parses its argument types on every call.
    ioctlPointer: libc.func('int ioctl(int fd, unsigned long request, uint8_t *arg)'),
    ioctlInteger: libc.func('int ioctl(int fd, unsigned long request, unsigned long arg)'),
    pread: libc.func('intptr_t pread(int fd, _Out_ uint8_t *buf, size_t count, int64_t offset)'),
    pwrite: libc.func('intptr_t pwrite(int fd, const uint8_t *buf, size_t count, int64_t offset)'),
    read: libc.func('intptr_t read(int fd, _Out_ uint8_t *buf, size_t count)'),
    write: libc.func('intptr_t write(int fd, const uint8_t *buf, size_t count)'),
    eventfd: libc.func('int eventfd(unsigned int initval, int flags)'),
    epollCreate1: libc.func('int epoll_create1(int flags)'),
    epollCtl: libc.func('int epoll_ctl(int epfd, int op, int fd, const uint8_t *event)'),
    epollWait: libc.func('int epoll_wait(int epfd, _Out_ uint8_t *events, int maxevents, int timeout)'),
  };
}

let bound: ReturnType<typeof bind> | undefined;

/** Linux's libc, bound on first use, so that importing this module on another OS does not fail. */
function c(): ReturnType<typeof bind> {
  return (bound ??= bind());
}

export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;

export const EAGAIN = 11;
export const EINTR = 4;

export function errno(): number {
  return koffi.errno();
}

/** open(2); returns the fd or throws with errno (callers map errno to advice). */
export function open(path: string, flags: number): number {
  const fd = c().open(path, flags | O_CLOEXEC, 0) as number;
  if (fd < 0) throw new SyscallError(`open ${path}`, errno());
  return fd;
}

export function close(fd: number): void {
  c().close(fd);
}

/** ioctl(2) with an argument struct in `arg` (read and written in place). */
export function ioctlBuffer(fd: number, request: number, arg: Buffer, what: string): number {
  const rc = c().ioctlPointer(fd, request, arg) as number;
  if (rc < 0) throw new SyscallError(what, errno());
  return rc;
}

/** ioctl(2) whose argument is an integer (or none). */
export function ioctlValue(fd: number, request: number, value: number, what: string): number {
  const rc = c().ioctlInteger(fd, request, value) as number;
  if (rc < 0) throw new SyscallError(what, errno());
  return rc;
}

export function preadExact(fd: number, buf: Buffer, offset: number, what: string): void {
  const n = c().pread(fd, buf, buf.length, offset) as number;
  if (n !== buf.length) throw new SyscallError(`${what} (read ${n} of ${buf.length} bytes)`, n < 0 ? errno() : 5);
}

export function pwriteExact(fd: number, buf: Buffer, offset: number, what: string): void {
  const n = c().pwrite(fd, buf, buf.length, offset) as number;
  if (n !== buf.length) throw new SyscallError(`${what} (wrote ${n} of ${buf.length} bytes)`, n < 0 ? errno() : 5);
}

/** read(2) returning bytes read, or -1 with EAGAIN for a non-blocking fd with nothing to read. */
export function readSome(fd: number, buf: Buffer, what: string): number {
  const n = c().read(fd, buf, buf.length) as number;
  if (n < 0) {
    const e = errno();
    if (e === EAGAIN) return -1;
    throw new SyscallError(what, e);
  }
  return n;
}

export function writeAll(fd: number, buf: Buffer, what: string): void {
  const n = c().write(fd, buf, buf.length) as number;
  if (n !== buf.length) throw new SyscallError(what, n < 0 ? errno() : 5);
}

export function eventfd(flags: number): number {
  const fd = c().eventfd(0, flags | EFD_CLOEXEC) as number;
  if (fd < 0) throw new SyscallError('eventfd', errno());
  return fd;
}

export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLLIN = 0x001;
/** struct epoll_event is packed on x86-64: u32 events, u64 data. */
export const EPOLL_EVENT_SIZE = 12;

export function epollCreate(): number {
  const fd = c().epollCreate1(O_CLOEXEC) as number;
  if (fd < 0) throw new SyscallError('epoll_create1', errno());
  return fd;
}

export function epollCtl(epfd: number, op: number, fd: number, token: number): void {
  const event = Buffer.alloc(EPOLL_EVENT_SIZE);
  event.writeUInt32LE(EPOLLIN, 0);
  event.writeBigUInt64LE(BigInt(token), 4);
  if ((c().epollCtl(epfd, op, fd, event) as number) < 0) throw new SyscallError(`epoll_ctl op ${op} fd ${fd}`, errno());
}

/** Blocks until events arrive (EINTR counts as none); fills `events` and returns how many. */
export function epollWait(epfd: number, events: Buffer, timeoutMs: number): number {
  const n = c().epollWait(epfd, events, Math.floor(events.length / EPOLL_EVENT_SIZE), timeoutMs) as number;
  if (n >= 0) return n;
  const e = errno();
  if (e === EINTR) return 0;
  throw new SyscallError('epoll_wait', e);
}
