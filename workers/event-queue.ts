/**
 * The OS event queue the interrupt worker blocks in: epoll(7) on Linux,
 * kqueue(2) on the BSDs. One small interface so the worker is the same on
 * both; fds are added and removed from other threads while it waits.
 */
import { platform } from 'node:os';
import * as libc from '../kernel/libc.js';
import { kqueueEventQueue } from './kqueue.js';

export interface EventQueue {
  readonly fd: number;
  /** Watches `fd` for readability; `token` comes back from wait(). */
  add(fd: number, token: number): void;
  remove(fd: number): void;
  /** Blocks until at least one watched fd is readable; returns their tokens. */
  wait(): number[];
  close(): void;
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
    for (let i = 0; i < n; i++) tokens.push(Number(this.events.readBigUInt64LE(i * libc.EPOLL_EVENT_SIZE + 4)));
    return tokens;
  }

  close(): void {
    libc.close(this.fd);
  }
}

/** A new queue, or (with `fd`) a handle on one another thread created. */
export function eventQueue(fd?: number): EventQueue {
  if (platform() === 'linux') return new Epoll(fd ?? libc.epollCreate());
  if (platform() === 'netbsd') return kqueueEventQueue(fd);
  throw new Error(`upci has no event queue for ${platform()}: it knows epoll (Linux) and kqueue (NetBSD)`);
}
