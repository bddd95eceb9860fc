/**
 * The OS event queue the interrupt worker blocks in: epoll(7) on Linux,
 * kqueue(2) on NetBSD (bindings in kernel/libc.ts and kernel/netbsd/libc.ts).
 * One small interface so the worker is the same on both; fds are added and
 * removed from other threads while it waits.
 */
import * as libc from '../kernel/libc.js';
import * as nb from '../kernel/netbsd/libc.js';
import { hostPlatform, type Platform } from '../kernel/platform.js';
import type { Operation } from '../kernel/posix.js';
import { eventfdWakeable, pipeWakeable, type Wakeable } from './wakeable.js';

export type { Wakeable } from './wakeable.js';

/**
 * The queue and the few calls on the fds it watches, so that the interrupt
 * hub and worker contain no OS-specific code: everything here is the OS's
 * (its libc, its errno values).
 */
export interface EventQueue {
  readonly fd: number;
  /** Watches `fd` for readability (level-triggered); `token` comes back from wait(). */
  add(fd: number, token: number): void;
  remove(fd: number): void;
  /** Blocks until at least one watched fd is readable; returns their tokens. */
  wait(): number[];
  close(): void;
  /** A new wake-up fd for this OS (eventfd on Linux, a pipe on NetBSD); the caller watches, wakes and closes it. */
  wakeable(): Wakeable;
  /** read(2) of a watched non-blocking fd: bytes read, 0 at end of file, -1 when there is nothing (EAGAIN). */
  read(fd: number, buf: Buffer, what: Operation): number;
  /** close(2) of an fd the caller owns. */
  closeFd(fd: number): void;
}

const MAX_EVENTS = 64;

class Epoll implements EventQueue {
  private readonly events = Buffer.alloc(MAX_EVENTS * libc.EPOLL_EVENT_SIZE);

  constructor(readonly fd: number) {}

  add(fd: number, token: number): void {
    libc.epollCtl(this.fd, libc.EPOLL_CTL_ADD, fd, token);
  }

  remove(fd: number): void {
    libc.epollCtl(this.fd, libc.EPOLL_CTL_DEL, fd, 0);
  }

  wait(): number[] {
    const n = libc.epollWait(this.fd, this.events, -1);
    const tokens: number[] = [];
    // Tokens are slot numbers: the low word of epoll_data holds all of one.
    for (let i = 0; i < n; i++) tokens.push(this.events.readUInt32LE(i * libc.EPOLL_EVENT_SIZE + 4));
    return tokens;
  }

  close(): void {
    libc.close(this.fd);
  }

  wakeable(): Wakeable {
    return eventfdWakeable();
  }

  read(fd: number, buf: Buffer, what: Operation): number {
    return libc.readSome(fd, buf, what);
  }

  closeFd(fd: number): void {
    libc.close(fd);
  }
}

/** EVFILT_READ on each watched fd, the token carried in udata. Never run (NetBSD cannot run here). */
class Kqueue implements EventQueue {
  private readonly events = Buffer.alloc(MAX_EVENTS * nb.kevent.size);

  constructor(readonly fd: number) {}

  add(fd: number, token: number): void {
    nb.keventChange(this.fd, fd, nb.EV_ADD, token, 'EV_ADD');
  }

  remove(fd: number): void {
    nb.keventChange(this.fd, fd, nb.EV_DELETE, 0, 'EV_DELETE');
  }

  wait(): number[] {
    const n = nb.keventWait(this.fd, this.events);
    const tokens: number[] = [];
    // No change list is passed to the wait, so no EV_ERROR receipts come back: every event is a readable fd.
    for (let i = 0; i < n; i++) tokens.push(Number(nb.kevent.get(this.events, 'udata', i * nb.kevent.size)));
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

/** Threads share the fd table: `fd` is a queue another thread created. */
const queues: Readonly<Record<Platform, (fd?: number) => EventQueue>> = {
  linux: (fd) => new Epoll(fd ?? libc.epollCreate()),
  netbsd: (fd) => new Kqueue(fd ?? nb.kqueueCreate()),
};

/** A new queue, or (with `fd`) a handle on one another thread created. */
export function eventQueue(fd?: number): EventQueue {
  return queues[hostPlatform()](fd);
}

/** close(2) of an fd the caller owns, without a queue. */
export function closeFd(fd: number): void {
  eventQueue(-1).closeFd(fd);
}
