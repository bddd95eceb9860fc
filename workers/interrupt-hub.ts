/**
 * The main-thread side of the interrupt worker: hands interrupt sources
 * (kernel/port.ts IrqSource) to it and, each time it wakes the main thread
 * (through the event loop's own async handle: no message copies, no
 * polling), calls each source's listener with the interrupts it counted per
 * vector. The worker runs while any source is registered, so an idle process
 * can exit. Nothing here is OS-specific: the event queue
 * (workers/event-queue.ts) is.
 *
 * fd ownership: a source with owner 'hub' is handed over at register() and
 * closed here once the worker can no longer be reading it; a source with
 * owner 'device' is never closed here, and unregister() returns only once the
 * worker has let go of it, so its owner may close it right after.
 */
import { Piscina } from 'piscina';
import { UpciError } from '../kernel/errors.js';
import type { IrqSource } from '../kernel/port.js';
import {
  board, createBoardBuffer, EPOCH, EXITED, FORMAT_COUNTER, FORMAT_DRAIN, FORMAT_RECORDS, SHUTDOWN, SLOT_COUNT, WAKE_SLOT, type Board,
} from './interrupt-board.js';
import { closeFd, eventQueue, type EventQueue, type Wakeable } from './event-queue.js';
import type { WorkerTask } from './interrupt-worker.js';
import { createMainThreadWaker } from './main-thread-waker.js';

/** Called with the source's vector (firstVector-based, as the device numbers it) and the interrupts counted since the last call. */
export type SourceListener = (vector: number, count: number) => void;

/** How long the worker outlives its last source, so establish/disestablish loops do not restart it each time. */
const LINGER_MS = 200;
/** Removed sources allowed to wait for the worker's epoch before register() waits for it. */
const MAX_PENDING_CLOSES = 32;
/** How long register() waits for the worker to let go of removed sources before looking for free slots anyway. */
const RECLAIM_WAIT_MS = 1000;
/** How long unregister() of a device-owned fd waits for the worker to finish its batch before giving up. */
const LET_GO_TIMEOUT_MS = 5000;

interface Registration {
  readonly base: number;
  readonly source: IrqSource;
  readonly listener: SourceListener;
}

class Session {
  readonly buffer = createBoardBuffer();
  readonly board: Board = board(this.buffer);
  readonly queue: EventQueue = eventQueue();
  private readonly wakeup: Wakeable = this.queue.wakeable();
  private readonly waker = createMainThreadWaker(() => this.drain());
  private readonly pool = new Piscina({
    filename: new URL('./interrupt-worker.js', import.meta.url).href,
    minThreads: 1,
    maxThreads: 1,
  });
  /** By base slot. */
  private readonly registrations = new Map<number, Registration>();
  /** The registrations as an array, remade at each change: drain() runs per wake-up and iterating a Map allocates. */
  private draining: readonly Registration[] = [];
  private readonly seen = new Uint32Array(SLOT_COUNT);
  /** Slots in use, including removed ones whose epoch has not passed yet. */
  private readonly taken = new Uint8Array(SLOT_COUNT);
  /** Removed sources: their slots are reusable (and a hub-owned fd closable, fd >= 0) once the worker's epoch has passed the removal. */
  private readonly closing: { fd: number; base: number; span: number; epoch: number }[] = [];
  private stopping = false;
  readonly done: Promise<void>;

  constructor() {
    this.taken[WAKE_SLOT] = 1;
    Atomics.store(this.board.formats, WAKE_SLOT, FORMAT_DRAIN);
    Atomics.store(this.board.fds, WAKE_SLOT, this.wakeup.fd);
    this.queue.add(this.wakeup.fd, WAKE_SLOT);
    const task: WorkerTask = { queueFd: this.queue.fd, board: this.buffer, wakerId: this.waker.id };
    this.done = this.pool.run(task).then(() => this.teardown(), (e: unknown) => {
      this.teardown();
      throw e;
    });
    this.done.catch((e: unknown) => process.emitWarning(`upci interrupt worker failed: ${String(e)}`));
  }

  get size(): number {
    return this.registrations.size;
  }

  /** First fit of `span` consecutive free slots, or -1. */
  private findSlots(span: number): number {
    for (let base = 1, run = 0; base + run < SLOT_COUNT; ) {
      if (this.taken[base + run]) {
        base += run + 1;
        run = 0;
      } else if (++run === span) {
        return base;
      }
    }
    return -1;
  }

  register(source: IrqSource, listener: SourceListener): number {
    const span = source.vectors;
    if (!Number.isInteger(span) || span < 1 || span >= SLOT_COUNT) throw new UpciError('OUT_OF_RANGE', `an interrupt source of ${span} vectors`);
    // A caller that never yields (an establish/release loop) would otherwise pile up fds until EMFILE.
    let base = this.closing.length >= MAX_PENDING_CLOSES ? -1 : this.findSlots(span);
    if (base < 0) {
      this.reclaim(this.closing.length > 0);
      base = this.findSlots(span);
    }
    if (base < 0) throw new UpciError('BUSY', `no ${span} free interrupt slot(s): more than ${SLOT_COUNT - 1} interrupt vectors in one process`);
    const b = this.board;
    for (let v = 0; v < span; v++) {
      this.taken[base + v] = 1;
      this.seen[base + v] = Atomics.load(b.counts, base + v);
    }
    this.registrations.set(base, { base, source, listener });
    this.draining = [...this.registrations.values()];
    Atomics.store(b.formats, base, source.format === 'records' ? FORMAT_RECORDS : FORMAT_COUNTER);
    Atomics.store(b.firsts, base, source.firstVector);
    Atomics.store(b.spans, base, span);
    // The fd last: the worker reads the decoding words only after seeing it.
    Atomics.store(b.fds, base, source.fd);
    try {
      this.queue.add(source.fd, base);
    } catch (e) {
      Atomics.store(b.fds, base, -1);
      this.registrations.delete(base);
      this.draining = [...this.registrations.values()];
      for (let v = 0; v < span; v++) this.taken[base + v] = 0;
      throw e;
    }
    return base;
  }

  /**
   * Stops watching the source at `base`. A hub-owned fd is closed, and the
   * slots reused, once the worker can no longer be reading it; for a
   * device-owned fd this waits (synchronously, one worker batch) until then.
   */
  unregister(base: number, letGo = true): void {
    const registration = this.registrations.get(base);
    if (registration === undefined) return;
    this.registrations.delete(base);
    this.draining = [...this.registrations.values()];
    const fd = Atomics.exchange(this.board.fds, base, -1);
    if (fd < 0) return;
    this.queue.remove(fd);
    const owned = registration.source.owner === 'hub';
    const epoch = Atomics.load(this.board.header, EPOCH);
    this.closing.push({ fd: owned ? fd : -1, base, span: registration.source.vectors, epoch });
    this.wakeup.wake();
    if (!owned && letGo) this.awaitEpochAfter(epoch);
  }

  /** Blocks until the worker has finished a batch begun after `epoch` was read (or has exited), or `timeoutMs` passes; says which. */
  private waitEpochAfter(epoch: number, timeoutMs: number): boolean {
    const header = this.board.header;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const now = Atomics.load(header, EPOCH);
      if (now > epoch || Atomics.load(header, EXITED) !== 0) return true;
      if (Date.now() >= deadline) return false;
      this.wakeup.wake();
      Atomics.wait(header, EPOCH, now, 100);
    }
  }

  private awaitEpochAfter(epoch: number): void {
    if (!this.waitEpochAfter(epoch, LET_GO_TIMEOUT_MS)) {
      throw new UpciError('KERNEL', `the interrupt worker did not finish its batch within ${LET_GO_TIMEOUT_MS} ms; a device fd it watched may still be in its hands`);
    }
  }

  /**
   * Closes removed hub-owned fds and frees their slots once the worker's
   * epoch has passed their removal; with `block`, first waits (briefly) for
   * the worker to finish the batch it is in, for callers that cannot return
   * to the event loop.
   */
  private reclaim(block: boolean): void {
    const newest = this.closing[this.closing.length - 1];
    if (block && newest !== undefined) this.waitEpochAfter(newest.epoch, RECLAIM_WAIT_MS);
    const epoch = Atomics.load(this.board.header, EPOCH);
    while (this.closing.length > 0 && this.closing[0]!.epoch < epoch) {
      const { fd, base, span } = this.closing.shift()!;
      if (fd >= 0) this.queue.closeFd(fd);
      for (let v = 0; v < span; v++) this.taken[base + v] = 0;
    }
  }

  private drain(): void {
    this.reclaim(false);
    const draining = this.draining;
    for (let i = 0; i < draining.length; i++) {
      const { base, source, listener } = draining[i]!;
      for (let v = 0; v < source.vectors; v++) {
        const count = Atomics.load(this.board.counts, base + v);
        const delta = (count - this.seen[base + v]!) >>> 0;
        if (delta === 0) continue;
        this.seen[base + v] = count;
        listener(source.firstVector + v, delta);
      }
    }
  }

  stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    Atomics.store(this.board.header, SHUTDOWN, 1);
    this.wakeup.wake();
  }

  /** The worker has returned: nothing reads the fds any more. */
  private teardown(): void {
    for (const base of [...this.registrations.keys()]) this.unregister(base, false);
    for (const { fd } of this.closing.splice(0)) if (fd >= 0) this.queue.closeFd(fd);
    this.queue.close();
    this.wakeup.close();
    this.waker.close();
    void this.pool.destroy();
  }
}

export interface HubRegistration {
  readonly session: Session;
  readonly slot: number;
}

/** One interrupt worker per process, shared by every device. */
class InterruptHub {
  private session: Session | undefined;
  private lingering: NodeJS.Timeout | undefined;

  constructor() {
    // process.exit() waits for worker threads, and a worker blocked in epoll_wait/kevent
    // cannot be terminated: wake it so that it returns and exit completes.
    process.on('exit', () => this.session?.stop());
  }

  /** Watches `source`; `listener` gets each vector's count. Register a source once; unregister it before its device closes. */
  register(source: IrqSource, listener: SourceListener): HubRegistration {
    clearTimeout(this.lingering);
    this.session ??= new Session();
    return { session: this.session, slot: this.session.register(source, listener) };
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

  /** Closes a hub-owned source that will not be registered after all (no worker has seen it); a device-owned one is left alone. */
  discard(source: IrqSource): void {
    if (source.owner === 'hub') closeFd(source.fd);
  }
}

export const interruptHub = new InterruptHub();
export type { Session as InterruptSession };
