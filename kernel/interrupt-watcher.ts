/**
 * Interrupt sources (kernel/port.ts IrqSource) watched by the event loop of
 * the thread that calls watchSource(): libuv polls the fd (epoll on Linux,
 * kqueue on the BSDs) through a uv_poll_t in a small addon
 * (kernel/native/interrupt_watcher.cc), and the listener runs in this
 * thread's loop, so a driver in a worker thread is woken by its own loop
 * with no other thread in between. A watched source keeps the thread's loop
 * alive (like an open socket) until it is unwatched.
 *
 * unwatch() stops polling before it returns: a 'hub'-owned fd (one handed
 * over with the source) is closed right then; a 'device'-owned fd is left to
 * its device. Every hub-owned fd open in this thread is also listed in the
 * thread's fd ledger when one is installed (installFdLedger), so that the
 * main thread can close the fds of a worker it had to terminate.
 */
import { loadNativeAddon } from './native-addon.js';
import type { IrqSource } from './port.js';
import { closeFd, fdCalls } from './fd-calls.js';

interface WatcherAddon {
  /** `counter`: an eventfd, read by the addon, callback(count); else callback(0) when readable. */
  watch(fd: number, counter: boolean, callback: (count: number) => void): number;
  unwatch(id: number): void;
}

const addon = loadNativeAddon<WatcherAddon>('upci_irq', 'interrupt watcher');

/** Called with the source's vector (firstVector-based, as the device numbers it) and the interrupts counted since the last call. */
export type SourceListener = (vector: number, count: number) => void;

/** Bytes of one 'records' record: u32 vector, u32 count. */
const RECORD_SIZE = 8;
/** Records read per read(2): pciuser(4) has at most 64 vectors, one record each. */
const RECORDS_PER_READ = 64;

/**
 * fds this thread owns, in shared memory another thread can read: slots of
 * an Int32Array, -1 when free. A slot is filled before the fd is watched and
 * cleared before it is closed.
 */
export class FdLedger {
  readonly fds: Int32Array;

  constructor(buffer: SharedArrayBuffer, byteOffset: number, slots: number) {
    this.fds = new Int32Array(buffer, byteOffset, slots);
  }

  static bytes(slots: number): number {
    return 4 * slots;
  }

  clear(): void {
    this.fds.fill(-1);
  }

  add(fd: number): void {
    for (let i = 0; i < this.fds.length; i++) {
      if (Atomics.compareExchange(this.fds, i, -1, fd) === -1) return;
    }
    throw new Error(`more than ${this.fds.length} interrupt fds open in one driver thread`);
  }

  remove(fd: number): void {
    const at = this.fds.indexOf(fd);
    if (at >= 0) Atomics.store(this.fds, at, -1);
  }

  /** The fds still listed, each removed from the ledger (for the thread that closes them after the owner is gone). */
  take(): number[] {
    const open: number[] = [];
    for (let i = 0; i < this.fds.length; i++) {
      const fd = Atomics.exchange(this.fds, i, -1);
      if (fd >= 0) open.push(fd);
    }
    return open;
  }
}

let ledger: FdLedger | undefined;

/** Lists this thread's hub-owned interrupt fds in `l` from now on. */
export function installFdLedger(l: FdLedger): void {
  ledger = l;
}

/**
 * Lists `fd`, opened by this thread for itself (not a watched source), in
 * the thread's fd ledger: if the thread is terminated before it closes the
 * fd, the main thread closes it (a device file the kernel waits for, e.g.
 * /dev/ublkcN). The returned function unlists it: call it before closing.
 */
export function holdFd(fd: number): () => void {
  const held = ledger;
  held?.add(fd);
  return () => held?.remove(fd);
}

export interface SourceWatch {
  /** Stops polling (synchronously) and closes a hub-owned fd. Idempotent. */
  unwatch(): void;
}

export function watchSource(source: IrqSource, listener: SourceListener): SourceWatch {
  const owned = source.owner === 'hub';
  if (owned) ledger?.add(source.fd);
  let id: number;
  try {
    if (source.format === 'counter') {
      id = addon.watch(source.fd, true, (count) => listener(source.firstVector, count));
    } else {
      const { read } = fdCalls();
      const buf = Buffer.alloc(RECORDS_PER_READ * RECORD_SIZE);
      const { fd, firstVector, vectors } = source;
      id = addon.watch(fd, false, () => {
        for (;;) {
          const n = read(fd, buf, 'read of interrupt records');
          if (n <= 0) return; // nothing left (EAGAIN), or end of file (no interrupts established)
          for (let at = 0; at + RECORD_SIZE <= n; at += RECORD_SIZE) {
            const vector = buf.readUInt32LE(at);
            // A vector outside the source's range is dropped, never given to a neighbour.
            if (vector >= firstVector && vector < firstVector + vectors) listener(vector, buf.readUInt32LE(at + 4));
          }
        }
      });
    }
  } catch (e) {
    if (owned) discardSource(source);
    throw e;
  }
  return watchHandle(id, () => {
    if (owned) discardSource(source);
  });
}

/** What stops the polling of watch `id`, once; `after` runs then. */
function watchHandle(id: number, after?: () => void): SourceWatch {
  let watching = true;
  return {
    unwatch: () => {
      if (!watching) return;
      watching = false;
      addon.unwatch(id);
      after?.();
    },
  };
}

/**
 * Any fd this thread reads when it is readable (a TAP's), by the same
 * uv_poll machinery as interrupts: `onReadable` runs in this thread's loop
 * while the fd has data (level-triggered: whatever it leaves unread wakes it
 * again on the loop's next turn). The fd stays its owner's: unwatch() only
 * stops the polling, and must come before the owner closes it.
 */
export function watchReadable(fd: number, onReadable: () => void): SourceWatch {
  return watchHandle(addon.watch(fd, false, onReadable));
}

/** Closes a hub-owned source that will not be (or is no longer) watched; a device-owned one is left alone. */
export function discardSource(source: IrqSource): void {
  if (source.owner !== 'hub') return;
  ledger?.remove(source.fd);
  closeFd(source.fd);
}
