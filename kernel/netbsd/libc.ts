/**
 * The system calls the NetBSD port makes: the shared POSIX ones bound to
 * NetBSD's libc.so on first use (kernel/posix.ts), and kqueue, so importing
 * the NetBSD port (or workers/event-queue.ts) on Linux costs nothing. Values
 * are NetBSD's (sys/fcntl.h, sys/errno.h, sys/event.h), not Linux's. kqueue
 * has only been checked for layout (test/unit/netbsd-abi.test.ts), never
 * run.
 */
import koffi, { type KoffiFunc } from 'koffi';
import { Struct } from '../abi.js';
import { SyscallError } from '../errors.js';
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
export const { errno, open, close, ioctlBuffer, ioctlValue, readSome, writeSome, pipe } = sys;

/** NetBSD's libc, loaded on the first call. */
export const libc = sys.library;

/** The address of a Buffer's bytes, for ioctl structs that point at user memory (Node never moves them). */
export function address(buf: Buffer): bigint {
  return koffi.address(buf);
}

/**
 * struct kevent as NetBSD 5-10 define it (sys/event.h; amd64: 40 bytes),
 * which is what libc's __kevent50 takes on every release since 5.0: NetBSD
 * 11 grew the struct to 72 bytes (uint64_t ext[4]) behind a new symbol,
 * __kevent100, and kept __kevent50 as a converting wrapper. Binding
 * __kevent50 by name gives one layout for all of them; `kevent` itself is
 * the pre-5.0 entry point with a 32-bit time_t timeout.
 */
export const kevent = new Struct('kevent', {
  ident: 'u64', filter: 'u32', flags: 'u32', fflags: 'u32', data: 'u64', udata: 'u64',
});

export const EVFILT_READ = 0;
export const EV_ADD = 0x0001;
export const EV_DELETE = 0x0002;

let bound: { kqueue1: KoffiFunc<(flags: number) => number>; kevent: KoffiFunc<(...args: unknown[]) => number> } | undefined;

function kq(): NonNullable<typeof bound> {
  return (bound ??= {
    kqueue1: libc().func('int kqueue1(int flags)'),
    kevent: libc().func('int __kevent50(int kq, const uint8_t *changes, size_t nchanges, _Out_ uint8_t *events, size_t nevents, const void *timeout)'),
  });
}

export function kqueueCreate(): number {
  const fd = kq().kqueue1(O_CLOEXEC) as number;
  if (fd < 0) throw new SyscallError('kqueue1', errno());
  return fd;
}

/** One EVFILT_READ change (EV_ADD with `token` as udata, or EV_DELETE) for `fd`. */
export function keventChange(kqFd: number, fd: number, flags: number, token: number, what: string): void {
  const change = kevent.encode({ ident: BigInt(fd), filter: EVFILT_READ, flags, udata: BigInt(token) });
  if ((kq().kevent(kqFd, change, 1, null, 0, null) as number) < 0) throw new SyscallError(`kevent ${what} fd ${fd}`, errno());
}

/** Blocks (no timeout) until events arrive (EINTR counts as none); fills `events` and returns how many. */
export function keventWait(kqFd: number, events: Buffer): number {
  const n = kq().kevent(kqFd, null, 0, events, Math.floor(events.length / kevent.size), null) as number;
  if (n >= 0) return n;
  const e = errno();
  if (e === EINTR) return 0;
  throw new SyscallError('kevent wait', e);
}
