/**
 * A single-producer, single-consumer ring of fixed-size Int32 slots in a
 * SharedArrayBuffer, for requests and completions between two threads with
 * no message per entry. The producer writes a slot in place and advances
 * the tail; the consumer drains every published slot per wake and advances
 * the head. A consumer that finds the ring empty waits with
 * Atomics.waitAsync, in its own event loop (no extra thread); the producer
 * notifies only when the consumer said it may be waiting.
 *
 * One producer and one consumer per ring: head and tail are plain counters,
 * not compare-and-swap loops, so two producers would overwrite each other's
 * slots. Each side claims its end once (RingProducer.claim,
 * RingConsumer.claim); a second claim of the same end, in any thread, is
 * refused. Several producers need one ring each.
 */
import { UpciError } from '../kernel/errors.js';

// Header words. Head (the consumer's) and tail (the producer's) on separate 64-byte lines.
const HEAD = 0;
/** 1 while the consumer is about to wait or waits on TAIL. */
const WAITING = 1;
const TAIL = 16;
const PRODUCER = 24;
const CONSUMER = 25;
const SLOTS = 26;
const SLOT_WORDS = 27;
const HEADER_WORDS = 32;
/**
 * A waiting consumer looks again after this long even if nobody woke it.
 * Node 20 (V8 11.3) loses an Atomics.waitAsync wake-up now and then: a
 * producer in another thread that sees WAITING, clears it and notifies,
 * and the waiter's promise never resolves (measured on the host: about one
 * in a million slots between two threads both ways, and in the VM a packet
 * port's return ring stalled for good with 8,192 slots pending and WAITING
 * clear). The protocol re-checks under V8's own lock (waitAsync compares
 * TAIL), so this is a backstop: a lost wake-up costs this much latency, not
 * a stalled ring; an idle ring wakes this often.
 */
const RECHECK_MS = 50;

/** How a consumer waits: the defaults, or a test's (a re-check it controls, a wait that drops a notify). */
export interface RingWaiting {
  /** How long a waiting consumer waits before it looks again unwoken (RECHECK_MS). */
  readonly recheckMs?: number;
  /** Atomics.waitAsync on an Int32Array, or a stand-in. */
  readonly waitAsync?: RingWait;
}

/** Atomics.waitAsync's Int32Array form. */
export type RingWait = (words: Int32Array, index: number, value: number, timeoutMs: number) =>
  | { async: false; value: 'not-equal' | 'timed-out' }
  | { async: true; value: Promise<'ok' | 'timed-out'> };

/**
 * This thread's consumers' wake-ups so far: `notified` by a producer,
 * `recovered` by the re-check with slots waiting (their notify never came:
 * each cost up to the re-check period). Tests bound `recovered` to show the
 * hand-offs come from wake-ups, not from the backstop.
 */
const wakeUps = { notified: 0, recovered: 0 };

/** A copy of this thread's wake-up counts (take two and subtract). */
export function ringWakeUps(): { notified: number; recovered: number } {
  return { ...wakeUps };
}

/** A ring of `slots` (a power of two) slots of `slotWords` Int32 words each. */
export function createRing(slots: number, slotWords: number): SharedArrayBuffer {
  if (!Number.isInteger(slots) || slots < 1 || (slots & (slots - 1)) !== 0 || slots > 1 << 20) {
    throw new UpciError('OUT_OF_RANGE', `a ring of ${slots} slots`, 'use a power of two from 1 to 2^20 slots');
  }
  if (!Number.isInteger(slotWords) || slotWords < 1) throw new UpciError('OUT_OF_RANGE', `${slotWords} words per slot`, 'give each slot at least one word');
  const buffer = new SharedArrayBuffer(4 * (HEADER_WORDS + slots * slotWords));
  const words = new Int32Array(buffer);
  words[SLOTS] = slots;
  words[SLOT_WORDS] = slotWords;
  return buffer;
}

function claim(buffer: SharedArrayBuffer, end: typeof PRODUCER | typeof CONSUMER): Int32Array {
  const words = new Int32Array(buffer);
  const what = end === PRODUCER ? 'producer' : 'consumer';
  if (Atomics.compareExchange(words, end, 0, 1) !== 0) {
    throw new UpciError('BUSY', `this ring already has a ${what} (a ring is single-producer, single-consumer)`, `give each ${what} a ring of its own`);
  }
  return words;
}

abstract class RingEnd {
  /** The whole ring: a slot's words are at the index reserve() or a drain handler gets. */
  readonly words: Int32Array;
  readonly slots: number;
  readonly slotWords: number;
  protected readonly mask: number;

  protected constructor(buffer: SharedArrayBuffer, private readonly end: typeof PRODUCER | typeof CONSUMER) {
    this.words = claim(buffer, end);
    this.slots = this.words[SLOTS]!;
    this.slotWords = this.words[SLOT_WORDS]!;
    this.mask = this.slots - 1;
  }

  /** Slots published and not yet drained. */
  get used(): number {
    return (Atomics.load(this.words, TAIL) - Atomics.load(this.words, HEAD)) >>> 0;
  }

  protected at(counter: number): number {
    return HEADER_WORDS + (counter & this.mask) * this.slotWords;
  }

  /** Gives this end up, so another thread may claim it. */
  release(): void {
    Atomics.store(this.words, this.end, 0);
  }
}

export class RingProducer extends RingEnd {
  private reserved = false;
  /** Slots filled and not yet visible to the consumer (stage()), published together by flush(). */
  private staged = 0;

  static claim(buffer: SharedArrayBuffer): RingProducer {
    return new RingProducer(buffer);
  }

  private constructor(buffer: SharedArrayBuffer) {
    super(buffer, PRODUCER);
  }

  /**
   * The index in `words` of the next slot to fill, or -1 when the ring is
   * full (the consumer has not drained yet: the caller holds the entry back).
   */
  reserve(): number {
    if (this.used + this.staged === this.slots) return -1;
    this.reserved = true;
    return this.at(Atomics.load(this.words, TAIL) + this.staged);
  }

  /** Publishes the reserved slot (and any staged before it); wakes the consumer only if it may be waiting. */
  publish(): void {
    this.stage();
    this.flush();
  }

  /** Keeps the reserved slot back until flush(): a batch becomes visible at once (one wake-up, one drain). */
  stage(): void {
    if (!this.reserved) throw new Error('RingProducer: no reserved slot to publish');
    this.reserved = false;
    this.staged++;
  }

  /** Publishes every staged slot. */
  flush(): void {
    if (this.staged === 0) return;
    Atomics.add(this.words, TAIL, this.staged);
    this.staged = 0;
    if (Atomics.load(this.words, WAITING) !== 0 && Atomics.exchange(this.words, WAITING, 0) !== 0) Atomics.notify(this.words, TAIL, 1);
  }
}

/**
 * Handles one slot (its words from `at`); false leaves it, and every later
 * one, in the ring until resume(). The slot is free for the producer only
 * once the handler has returned.
 */
export type SlotHandler = (words: Int32Array, at: number) => boolean | void;

export class RingConsumer extends RingEnd {
  private handler: SlotHandler | undefined;
  private drained: (() => void) | undefined;
  private stopped = false;
  private paused = false;
  private waiting = false;
  private readonly recheckMs: number;
  private readonly waitAsync: RingWait;

  static claim(buffer: SharedArrayBuffer, waiting: RingWaiting = {}): RingConsumer {
    return new RingConsumer(buffer, waiting);
  }

  private constructor(buffer: SharedArrayBuffer, waiting: RingWaiting) {
    super(buffer, CONSUMER);
    this.recheckMs = waiting.recheckMs ?? RECHECK_MS;
    this.waitAsync = waiting.waitAsync ?? ((words, index, value, timeoutMs) => Atomics.waitAsync(words, index, value, timeoutMs));
  }

  /** Runs `handler` on every published slot, in order; false from it stops there (the slot stays). Returns the slots consumed. */
  drain(handler: SlotHandler): number {
    const words = this.words;
    let head = Atomics.load(words, HEAD);
    const tail = Atomics.load(words, TAIL);
    let n = 0;
    while (head !== tail) {
      if (handler(words, this.at(head)) === false) {
        this.paused = true;
        break;
      }
      head = (head + 1) | 0;
      // Each slot is given back as soon as it is handled, not after the batch.
      Atomics.store(words, HEAD, head);
      n++;
    }
    return n;
  }

  /**
   * Drains now, and again each time the producer publishes: woken by
   * Atomics.waitAsync, so in this thread's own event loop. A handler that
   * returns false pauses the loop until resume(). `drained` runs after each
   * drain that consumed a slot (the end of a batch: e.g. one doorbell for it).
   */
  start(handler: SlotHandler, drained?: () => void): void {
    if (this.handler !== undefined) throw new Error('RingConsumer.start called twice');
    this.handler = handler;
    this.drained = drained;
    this.run();
  }

  /** After a handler refused a slot: try it again, and go on. */
  resume(): void {
    if (!this.paused || this.stopped || this.handler === undefined) return;
    this.paused = false;
    this.run();
  }

  /** Stops the loop (a pending wait is woken and ends) and gives the consumer end up. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.waiting) Atomics.notify(this.words, TAIL);
    this.release();
  }

  /** A wait ended: made once, not a closure per wait (a wake-up per batch is on the I/O path). */
  private readonly woken = (how: 'ok' | 'timed-out'): void => {
    this.waiting = false;
    Atomics.store(this.words, WAITING, 0);
    this.run(how);
  };

  /** Drains and waits again; `cause` is how the last wait ended (undefined when it did not wait). */
  private run(cause?: 'ok' | 'timed-out' | 'not-equal'): void {
    const words = this.words;
    const handler = this.handler!;
    for (let woken = cause; ; woken = undefined) {
      if (this.stopped) return;
      const n = this.drain(handler);
      if (n > 0) {
        if (woken === 'timed-out') wakeUps.recovered++;
        this.drained?.();
      }
      if (woken === 'ok') wakeUps.notified++;
      if (this.paused || this.stopped) return;
      Atomics.store(words, WAITING, 1);
      // Published after the drain and before WAITING was seen: drain again instead of waiting.
      const tail = Atomics.load(words, TAIL);
      if (tail !== Atomics.load(words, HEAD)) {
        Atomics.store(words, WAITING, 0);
        continue;
      }
      const wait = this.waitAsync(words, TAIL, tail, this.recheckMs);
      if (!wait.async) {
        Atomics.store(words, WAITING, 0);
        continue;
      }
      this.waiting = true;
      void wait.value.then(this.woken);
      return;
    }
  }
}
