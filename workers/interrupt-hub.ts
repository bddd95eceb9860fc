/**
 * The main-thread side of the interrupt worker: hands eventfds to it, waits
 * for its notifications with Atomics.waitAsync (no message copies, no
 * polling), and calls each slot's listener with the interrupts it counted.
 * The worker runs while any slot is registered, so an idle process can exit.
 */
import { Piscina } from 'piscina';
import * as libc from '../kernel/libc.js';
import { UpciError } from '../kernel/errors.js';
import { board, createBoardBuffer, EPOCH, SEQUENCE, SHUTDOWN, SLOT_COUNT, WAKE_SLOT, type Board } from './interrupt-board.js';
import { eventQueue, type EventQueue } from './event-queue.js';
import type { WorkerTask } from './interrupt-worker.js';

export type SlotListener = (count: number) => void;

/** How long the worker outlives its last slot, so establish/disestablish loops do not restart it each time. */
const LINGER_MS = 200;
/** Removed fds allowed to wait for the worker's epoch before register() waits for it. */
const MAX_PENDING_CLOSES = 32;

class Session {
  readonly buffer = createBoardBuffer();
  readonly board: Board = board(this.buffer);
  readonly queue: EventQueue = eventQueue();
  private readonly wakeFd = libc.eventfd(libc.EFD_NONBLOCK);
  private readonly pool = new Piscina({
    filename: new URL('./interrupt-worker.js', import.meta.url).href,
    minThreads: 1,
    maxThreads: 1,
  });
  private readonly listeners = new Map<number, SlotListener>();
  private readonly seen = new Uint32Array(SLOT_COUNT);
  /** Removed slots and their fds, reusable once the worker's epoch has passed the removal. */
  private readonly closing: { fd: number; slot: number; epoch: number }[] = [];
  private nextSlot = 1;
  private readonly freeSlots: number[] = [];
  private stopping = false;
  readonly done: Promise<void>;

  constructor() {
    Atomics.store(this.board.fds, WAKE_SLOT, this.wakeFd);
    this.queue.add(this.wakeFd, WAKE_SLOT);
    const task: WorkerTask = { queueFd: this.queue.fd, board: this.buffer };
    this.done = this.pool.run(task).then(() => this.teardown(), (e: unknown) => {
      this.teardown();
      throw e;
    });
    this.done.catch((e: unknown) => process.emitWarning(`upci interrupt worker failed: ${String(e)}`));
    void this.listen(Atomics.load(this.board.header, SEQUENCE));
  }

  get size(): number {
    return this.listeners.size;
  }

  register(fd: number, listener: SlotListener): number {
    // A caller that never yields (an establish/release loop) would otherwise pile up fds until EMFILE.
    this.reclaim(this.closing.length >= MAX_PENDING_CLOSES || (this.freeSlots.length === 0 && this.nextSlot >= SLOT_COUNT));
    const slot = this.freeSlots.pop() ?? this.nextSlot++;
    if (slot >= SLOT_COUNT) throw new UpciError('BUSY', `more than ${SLOT_COUNT - 1} interrupt vectors in one process`);
    this.seen[slot] = Atomics.load(this.board.counts, slot);
    this.listeners.set(slot, listener);
    Atomics.store(this.board.fds, slot, fd);
    this.queue.add(fd, slot);
    return slot;
  }

  /** Stops watching the slot; its fd is closed, and the slot reused, once the worker can no longer be reading it. */
  unregister(slot: number): void {
    const fd = Atomics.exchange(this.board.fds, slot, -1);
    this.listeners.delete(slot);
    if (fd < 0) return;
    this.queue.remove(fd);
    this.closing.push({ fd, slot, epoch: Atomics.load(this.board.header, EPOCH) });
    this.wake();
  }

  private wake(): void {
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    libc.writeAll(this.wakeFd, one, 'write of the interrupt worker wake-up eventfd');
  }

  private async listen(sequence: number): Promise<void> {
    while (!this.stopping) {
      const waited = Atomics.waitAsync(this.board.header, SEQUENCE, sequence);
      if (waited.async) await waited.value;
      sequence = Atomics.load(this.board.header, SEQUENCE);
      this.drain();
    }
  }

  /**
   * Closes removed fds and frees their slots once the worker's epoch has
   * passed their removal; with `block`, first waits (briefly) for the worker
   * to finish the batch it is in, for callers that cannot return to the
   * event loop.
   */
  private reclaim(block: boolean): void {
    const header = this.board.header;
    if (block && this.closing.length > 0) {
      const epoch = Atomics.load(header, EPOCH);
      if (this.closing[this.closing.length - 1]!.epoch >= epoch) {
        this.wake();
        Atomics.wait(header, EPOCH, epoch, 1000);
      }
    }
    const epoch = Atomics.load(header, EPOCH);
    while (this.closing.length > 0 && this.closing[0]!.epoch < epoch) {
      const { fd, slot } = this.closing.shift()!;
      libc.close(fd);
      this.freeSlots.push(slot);
    }
  }

  private drain(): void {
    this.reclaim(false);
    for (const [slot, listener] of this.listeners) {
      const count = Atomics.load(this.board.counts, slot);
      const delta = (count - this.seen[slot]!) >>> 0;
      if (delta === 0) continue;
      this.seen[slot] = count;
      listener(delta);
    }
  }

  stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    Atomics.store(this.board.header, SHUTDOWN, 1);
    this.wake();
    // Unblocks listen() so it sees `stopping`.
    Atomics.add(this.board.header, SEQUENCE, 1);
    Atomics.notify(this.board.header, SEQUENCE);
  }

  private teardown(): void {
    for (const slot of [...this.listeners.keys()]) this.unregister(slot);
    for (const { fd } of this.closing.splice(0)) libc.close(fd);
    this.queue.close();
    libc.close(this.wakeFd);
    void this.pool.destroy();
  }
}

/** One interrupt worker per process, shared by every device. */
class InterruptHub {
  private session: Session | undefined;
  private lingering: NodeJS.Timeout | undefined;

  register(fd: number, listener: SlotListener): { session: Session; slot: number } {
    clearTimeout(this.lingering);
    this.session ??= new Session();
    return { session: this.session, slot: this.session.register(fd, listener) };
  }

  unregister(session: Session, slot: number): void {
    session.unregister(slot);
    if (session !== this.session || session.size > 0) return;
    this.lingering = setTimeout(() => {
      if (this.session === session && session.size === 0) {
        this.session = undefined;
        session.stop();
      }
    }, LINGER_MS);
  }
}

export const interruptHub = new InterruptHub();
export type { Session as InterruptSession };
