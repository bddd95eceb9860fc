/**
 * EventQueue over kqueue(2), for NetBSD: EVFILT_READ on each watched fd, the
 * token carried in udata. Bound through kernel/netbsd/libc.ts on first use,
 * so importing it on Linux is harmless; it has only been checked for layout
 * (test/unit/netbsd-abi.test.ts), never run.
 */
import type { KoffiFunc } from 'koffi';
import { SyscallError } from '../kernel/errors.js';
import { Struct } from '../kernel/abi.js';
import * as nb from '../kernel/netbsd/libc.js';
import type { Operation } from '../kernel/posix.js';
import type { EventQueue } from './event-queue.js';
import { pipeWakeable, type Wakeable } from './wakeable.js';

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

const MAX_EVENTS = 64;

let bound: { kqueue1: KoffiFunc<(flags: number) => number>; kevent: KoffiFunc<(...args: unknown[]) => number> } | undefined;

function c(): NonNullable<typeof bound> {
  if (bound !== undefined) return bound;
  const l = nb.libc();
  return (bound = {
    kqueue1: l.func('int kqueue1(int flags)'),
    kevent: l.func('int __kevent50(int kq, const uint8_t *changes, size_t nchanges, _Out_ uint8_t *events, size_t nevents, const void *timeout)'),
  });
}

class Kqueue implements EventQueue {
  private readonly events = Buffer.alloc(MAX_EVENTS * kevent.size);

  constructor(readonly fd: number) {}

  private change(fd: number, flags: number, token: number, what: string): void {
    const change = kevent.encode({ ident: BigInt(fd), filter: EVFILT_READ, flags, udata: BigInt(token) });
    if ((c().kevent(this.fd, change, 1, null, 0, null) as number) < 0) throw new SyscallError(`kevent ${what} fd ${fd}`, nb.errno());
  }

  add(fd: number, token: number): void {
    this.change(fd, EV_ADD, token, 'EV_ADD');
  }

  remove(fd: number): void {
    this.change(fd, EV_DELETE, 0, 'EV_DELETE');
  }

  /** Blocks (no timeout) until events arrive; EINTR counts as none, as in the epoll queue. */
  wait(): number[] {
    const n = c().kevent(this.fd, null, 0, this.events, MAX_EVENTS, null) as number;
    if (n < 0) {
      const e = nb.errno();
      if (e === nb.EINTR) return [];
      throw new SyscallError('kevent wait', e);
    }
    const tokens: number[] = [];
    // No change list is passed here, so no EV_ERROR receipts come back: every event is a readable fd.
    for (let i = 0; i < n; i++) tokens.push(Number(kevent.get(this.events, 'udata', i * kevent.size)));
    return tokens;
  }

  close(): void {
    nb.close(this.fd);
  }

  /** NetBSD has no eventfd: a non-blocking pipe. */
  wakeable(): Wakeable {
    return pipeWakeable(nb);
  }

  read(fd: number, buf: Buffer, what: Operation): number {
    return nb.readSome(fd, buf, what);
  }

  closeFd(fd: number): void {
    nb.close(fd);
  }
}

/** A new kqueue, or (with `fd`) a handle on one another thread created: threads share the fd table. */
export function kqueueEventQueue(fd?: number): EventQueue {
  if (fd !== undefined) return new Kqueue(fd);
  const kq = c().kqueue1(nb.O_CLOEXEC) as number;
  if (kq < 0) throw new SyscallError('kqueue1', nb.errno());
  return new Kqueue(kq);
}
