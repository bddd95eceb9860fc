/**
 * Linux's system calls: the POSIX ones every port shares, and eventfd and
 * epoll. Only kernel/ and workers/ import this module; drivers never do.
 */
import { SyscallError } from './errors.js';
import { posix } from './posix.js';

export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;

export const EAGAIN = 11;
export const EINTR = 4;

const sys = posix('libc.so.6', { O_CLOEXEC, EAGAIN, EINTR });
export const { errno, open, close, ioctlBuffer, ioctlValue, preadExact, pwriteExact, readSome, writeSome, writeAll, pipe } = sys;

let bound: ReturnType<typeof bind> | undefined;

function bind() {
  const lib = sys.library();
  return {
    eventfd: lib.func('int eventfd(unsigned int initval, int flags)'),
    epollCreate1: lib.func('int epoll_create1(int flags)'),
    epollCtl: lib.func('int epoll_ctl(int epfd, int op, int fd, const uint8_t *event)'),
    epollWait: lib.func('int epoll_wait(int epfd, _Out_ uint8_t *events, int maxevents, int timeout)'),
  };
}

const c = () => (bound ??= bind());

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
