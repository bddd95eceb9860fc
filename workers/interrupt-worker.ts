/**
 * The interrupt worker (a piscina task that runs until shutdown): blocks in
 * the OS event queue over every interrupt source of every device in the
 * process, folds what each source reports into the shared board's per-vector
 * counts, and wakes the main thread through its waker
 * (workers/main-thread-waker.ts). One worker serves all devices. It only
 * reads fds; it never closes one.
 */
import { board, EPOCH, EXITED, FORMAT_COUNTER, FORMAT_RECORDS, RECORD_SIZE, SHUTDOWN, type Board } from './interrupt-board.js';
import { eventQueue, EVENTS_PER_WAIT, type EventQueue } from './event-queue.js';
import { wakeMainThread } from './main-thread-waker.js';

export interface WorkerTask {
  readonly queueFd: number;
  readonly board: SharedArrayBuffer;
  /** The main thread's waker, woken after every batch. */
  readonly wakerId: number;
}

/** An eventfd's 8-byte count, allocated once: a wake-up's path allocates nothing it can avoid. */
const counter = Buffer.alloc(8);

/** Records read per read(2): pciuser(4) has at most 64 vectors, one record each. */
const RECORDS_PER_READ = 64;

/** Reads one source: an 8-byte counter, records until the fd has none, or (the wake-up fd) anything until a short read. */
export function readSource(queue: EventQueue, b: Board, slot: number, fd: number, buf: Buffer): void {
  const format = Atomics.load(b.formats, slot);
  if (format === FORMAT_COUNTER) {
    // Non-blocking eventfds: a read that loses a race with another reader returns -1 (EAGAIN).
    if (queue.read(fd, counter, () => `read of interrupt counter (slot ${slot})`) !== 8) return;
    // The counts wrap at 32 bits anyway: the low word is all that is added.
    Atomics.add(b.counts, slot, counter.readUInt32LE(0));
    return;
  }
  if (format === FORMAT_RECORDS) {
    const first = Atomics.load(b.firsts, slot);
    const span = Atomics.load(b.spans, slot);
    for (;;) {
      const n = queue.read(fd, buf, () => `read of interrupt records (slot ${slot})`);
      if (n <= 0) return; // nothing left (EAGAIN), or end of file (no interrupts established)
      for (let at = 0; at + RECORD_SIZE <= n; at += RECORD_SIZE) {
        const v = buf.readUInt32LE(at) - first;
        // A vector outside the source's range is dropped, never counted in a neighbour's slot.
        if (v >= 0 && v < span) Atomics.add(b.counts, slot + v, buf.readUInt32LE(at + 4));
      }
    }
  }
  // FORMAT_DRAIN: the wake-up fd; its content means nothing.
  while (queue.read(fd, buf, 'read of the interrupt worker wake-up fd') === buf.length);
}

export default function runInterruptWorker(task: WorkerTask): number {
  const queue = eventQueue(task.queueFd);
  const b = board(task.board);
  const { header, fds } = b;
  const buf = Buffer.alloc(RECORDS_PER_READ * RECORD_SIZE);
  const tokens = new Int32Array(EVENTS_PER_WAIT);
  let batches = 0;
  try {
    while (Atomics.load(header, SHUTDOWN) === 0) {
      for (let i = 0, n = queue.wait(tokens); i < n; i++) {
        const slot = tokens[i]!;
        const fd = Atomics.load(fds, slot);
        if (fd >= 0) readSource(queue, b, slot, fd, buf);
      }
      // Every batch is announced, even a wake-up alone: the main thread lets go of removed fds
      // on the epoch change, so the epoch moves before the wake that makes it look.
      Atomics.add(header, EPOCH, 1);
      Atomics.notify(header, EPOCH);
      wakeMainThread(task.wakerId);
      batches++;
    }
  } finally {
    Atomics.store(header, EXITED, 1);
    Atomics.notify(header, EPOCH);
  }
  return batches;
}
