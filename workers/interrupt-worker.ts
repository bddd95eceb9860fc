/**
 * The interrupt worker (a piscina task that runs until shutdown): blocks in
 * the OS event queue over every interrupt eventfd of every device in the
 * process, folds each eventfd's count into the shared board, and wakes the
 * main thread with Atomics.notify. One worker serves all devices.
 */
import * as libc from '../kernel/libc.js';
import { board, EPOCH, SEQUENCE, SHUTDOWN, WAKE_SLOT } from './interrupt-board.js';
import { eventQueue } from './event-queue.js';

export interface WorkerTask {
  readonly queueFd: number;
  readonly board: SharedArrayBuffer;
}

export default function runInterruptWorker(task: WorkerTask): number {
  const queue = eventQueue(task.queueFd);
  const { header, fds, counts } = board(task.board);
  const value = Buffer.alloc(8);
  let batches = 0;
  while (Atomics.load(header, SHUTDOWN) === 0) {
    for (const slot of queue.wait()) {
      const fd = Atomics.load(fds, slot);
      if (fd < 0) continue;
      // Non-blocking eventfds: a read that loses a race with another reader returns -1 (EAGAIN).
      if (libc.readSome(fd, value, () => `read of interrupt eventfd (slot ${slot})`) !== 8) continue;
      if (slot === WAKE_SLOT) continue;
      Atomics.add(counts, slot, Number(value.readBigUInt64LE(0) & 0xffffffffn));
    }
    // Every batch is announced, even a wake-up alone: the main thread closes removed fds on the epoch change.
    Atomics.add(header, EPOCH, 1);
    Atomics.notify(header, EPOCH);
    Atomics.add(header, SEQUENCE, 1);
    Atomics.notify(header, SEQUENCE);
    batches++;
  }
  return batches;
}
