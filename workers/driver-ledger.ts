/**
 * The shared memory between a driver's worker thread and the main thread:
 * the worker's heartbeat (advanced by its event loop), its counters, the
 * interrupt type it enabled and the interrupt fds it holds, so that the main
 * thread can supervise the driver and take its device back without asking
 * the worker anything.
 */
import { getHeapSpaceStatistics } from 'node:v8';
import { FdLedger } from '../kernel/interrupt-watcher.js';
import type { InterruptType } from '../pci/intr.js';

const HEARTBEAT = 0;
const INTERRUPTS = 1;
const IRQ_KIND = 2;
/** The worker's kernel thread id, 0 while unknown: the watchdog reads how long it waited to run. */
const TID = 3;
const WORDS = 4;
const HEAP_USED = 0;
const HEAP_LIMIT = 1;
const DMA_BYTES = 2;
/** When the last beat was, by Date.now(): the one clock every thread (and the host's event times) reads alike. */
const BEAT_AT = 3;
const HEAP_OLD = 4;
const NUMBERS = 5;
/** Interrupt fds one driver thread may hold (eventfds: one per vector). */
const FD_SLOTS = 2048;

const now = () => Date.now();

/** The young generation's spaces: what maxOldGenerationSizeMb does not count. */
const YOUNG = new Set(['new_space', 'new_large_object_space']);

/** This thread's heap as its limit counts it (DriverLedger.heapOld): bytes committed to every space but the young generation's. */
export function oldGenerationBytes(): number {
  let bytes = 0;
  for (const space of getHeapSpaceStatistics()) if (!YOUNG.has(space.space_name)) bytes += space.space_size;
  return bytes;
}

const KINDS: readonly InterruptType[] = ['intx', 'msi', 'msix'];

export class DriverLedger {
  private readonly words: Int32Array;
  private readonly numbers: Float64Array;
  readonly fds: FdLedger;

  private constructor(readonly buffer: SharedArrayBuffer) {
    this.words = new Int32Array(buffer, 0, WORDS);
    this.numbers = new Float64Array(buffer, 4 * WORDS, NUMBERS);
    this.fds = new FdLedger(buffer, 4 * WORDS + 8 * NUMBERS, FD_SLOTS);
  }

  static create(): DriverLedger {
    const ledger = new DriverLedger(new SharedArrayBuffer(4 * WORDS + 8 * NUMBERS + FdLedger.bytes(FD_SLOTS)));
    Atomics.store(ledger.words, IRQ_KIND, -1);
    ledger.fds.clear();
    return ledger;
  }

  /** The same ledger, in the worker. */
  static of(buffer: SharedArrayBuffer): DriverLedger {
    return new DriverLedger(buffer);
  }

  /** Worker: one beat of its event loop, with the numbers the status view shows. */
  beat(heapUsed: number, heapLimit: number, dmaBytes: number, heapOld = heapUsed): void {
    this.numbers[HEAP_USED] = heapUsed;
    this.numbers[HEAP_OLD] = heapOld;
    this.numbers[HEAP_LIMIT] = heapLimit;
    this.numbers[DMA_BYTES] = dmaBytes;
    this.numbers[BEAT_AT] = now();
    Atomics.add(this.words, HEARTBEAT, 1);
  }

  get heartbeat(): number {
    return Atomics.load(this.words, HEARTBEAT);
  }

  /**
   * Milliseconds since the worker's last beat, by the worker's own clock: a
   * main thread that looks late does not make the hang look longer.
   * Undefined before the first beat (a thread still loading): it has no age.
   */
  get heartbeatAgeMs(): number | undefined {
    const at = this.numbers[BEAT_AT]!;
    return at === 0 ? undefined : now() - at;
  }

  set tid(tid: number | undefined) {
    Atomics.store(this.words, TID, tid ?? 0);
  }

  /** The worker's kernel thread id, once it has said it. */
  get tid(): number | undefined {
    return Atomics.load(this.words, TID) || undefined;
  }

  /** Worker: interrupts delivered to the driver. */
  countInterrupts(n: number): void {
    Atomics.add(this.words, INTERRUPTS, n);
  }

  /** Interrupts counted so far (wraps at 2^32: readers take differences). */
  get interrupts(): number {
    return Atomics.load(this.words, INTERRUPTS) >>> 0;
  }

  set irqKind(kind: InterruptType | undefined) {
    Atomics.store(this.words, IRQ_KIND, kind === undefined ? -1 : KINDS.indexOf(kind));
  }

  /** The interrupt type the worker has enabled in the kernel, if any. */
  get irqKind(): InterruptType | undefined {
    return KINDS[Atomics.load(this.words, IRQ_KIND)];
  }

  get heapUsed(): number {
    return this.numbers[HEAP_USED]!;
  }

  /**
   * The heap V8's limit counts (resourceLimits.maxOldGenerationSizeMb): every
   * space but the young generation, as committed, fragmentation included.
   * It runs well above heapUsed for some allocation patterns (64 KiB arrays:
   * 93 MiB used in 122 MiB of old space), and V8 ends the thread by it.
   */
  get heapOld(): number {
    return this.numbers[HEAP_OLD]!;
  }

  get heapLimit(): number {
    return this.numbers[HEAP_LIMIT]!;
  }

  get dmaBytes(): number {
    return this.numbers[DMA_BYTES]!;
  }
}
