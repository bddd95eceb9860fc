/**
 * Linux's system calls: the POSIX ones every port shares, and eventfd.
 * Only kernel/ imports this module; drivers never do.
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
    bind: lib.func('int bind(int fd, const uint8_t *addr, uint32_t len)'),
    recvfrom: lib.func('intptr_t recvfrom(int fd, _Out_ uint8_t *buf, size_t len, int flags, _Out_ uint8_t *from, _Inout_ uint32_t *fromlen)'),
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

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const NETLINK_KOBJECT_UEVENT = 15;
/** The kernel's own multicast group of uevents (udev's re-broadcasts are group 2). */
const UEVENT_KERNEL_GROUP = 1;

/** A non-blocking netlink socket that receives the kernel's uevents (kobject add, remove, bind, unbind...). */
export function ueventSocket(): number {
  const fd = c().socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | O_NONBLOCK, NETLINK_KOBJECT_UEVENT) as number;
  if (fd < 0) throw new SyscallError('socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT)', errno());
  // struct sockaddr_nl: family, pad, port id (0: the kernel assigns one), groups.
  const addr = Buffer.alloc(12);
  addr.writeUInt16LE(AF_NETLINK, 0);
  addr.writeUInt32LE(UEVENT_KERNEL_GROUP, 8);
  if ((c().bind(fd, addr, addr.length) as number) < 0) {
    const e = errno();
    close(fd);
    throw new SyscallError('bind of the uevent socket', e);
  }
  return fd;
}

/**
 * One datagram from a netlink socket with its sender's port id (0: the
 * kernel), or undefined when none is waiting.
 */
export function receiveNetlink(fd: number, buf: Buffer): { length: number; senderPort: number } | undefined {
  const from = Buffer.alloc(12);
  const fromLength = [from.length];
  const n = c().recvfrom(fd, buf, buf.length, 0, from, fromLength) as number;
  if (n >= 0) return { length: n, senderPort: from.readUInt32LE(4) };
  const e = errno();
  if (e === EAGAIN || e === EINTR) return undefined;
  throw new SyscallError('recvfrom on the uevent socket', e);
}

/** A datagram socket, for the interface ioctls (SIOCSIFFLAGS...) the kernel takes on any socket; IPv6, as everything upci's networking is. */
export function datagramSocket(): number {
  const fd = c().socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new SyscallError('socket(AF_INET6, SOCK_DGRAM)', errno());
  return fd;
}
