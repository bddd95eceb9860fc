/**
 * Linux's system calls: the POSIX ones every port shares, and eventfd.
 * Only kernel/ and workers/ import this module; drivers never do.
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
export const { errno, open, close, ioctlBuffer, ioctlValue, preadExact, pwriteExact, readSome, writeAll, pipe } = sys;

let bound: ReturnType<typeof bind> | undefined;

function bind() {
  const lib = sys.library();
  return {
    eventfd: lib.func('int eventfd(unsigned int initval, int flags)'),
    socket: lib.func('int socket(int domain, int type, int protocol)'),
  };
}

const c = () => (bound ??= bind());

export function eventfd(flags: number): number {
  const fd = c().eventfd(0, flags | EFD_CLOEXEC) as number;
  if (fd < 0) throw new SyscallError('eventfd', errno());
  return fd;
}

const AF_INET6 = 10;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

/** A datagram socket, for the interface ioctls (SIOCSIFFLAGS...) the kernel takes on any socket; IPv6, as everything upci's networking is. */
export function datagramSocket(): number {
  const fd = c().socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new SyscallError('socket(AF_INET6, SOCK_DGRAM)', errno());
  return fd;
}
