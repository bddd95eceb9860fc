/**
 * Samples devices' progress from a thread of its own (isolation.test,
 * soak.test): the main thread is where a hung driver's device is taken back
 * and its replacement started, and where the tests' own load runs, so a
 * sampler there would time the main thread's pauses, not whether the
 * drivers' threads kept going. Reads each driver thread's ledger (shared
 * memory) every sampleMs by this thread's clock. Started and read from the
 * main thread through test/vm/sampling.ts.
 */
import { parentPort } from 'node:worker_threads';
import { DriverLedger } from '../../actors/driver-ledger.js';

export interface SamplerStart {
  readonly type: 'start';
  readonly sampleMs: number;
  /** The driver threads whose interrupt counts must keep rising. */
  readonly rising: readonly SharedArrayBuffer[];
  /** The driver threads whose heartbeat must stay fresh. */
  readonly beating: readonly SharedArrayBuffer[];
}

/** What one rising ledger did. */
export interface RisingResult {
  /** The longest time between two samples that saw its interrupt count rise (or since the last rise, at the stop). */
  readonly maxGapMs: number;
  /** When (Date.now()) that gap ended. */
  readonly maxGapEndedAt: number;
  /**
   * The longest such gap less this thread's own starvation within it (each interval between
   * its samples beyond sampleMs): the time the count stood still while this thread, and so
   * very likely the guest's other threads, ran. What the device's driver is to be judged by.
   */
  readonly maxRunningGapMs: number;
  readonly rises: number;
  /** The oldest heartbeat seen in its ledger (tells its thread's own stalls from late samples). */
  readonly heartbeatAgeMs: number;
}

export interface SamplerResult {
  /** In the order of SamplerStart.rising. */
  readonly rising: readonly RisingResult[];
  /** The oldest heartbeat seen in any of the beating threads' ledgers. */
  readonly maxHeartbeatAgeMs: number;
  /** The same less this thread's own starvation while that heartbeat aged (see maxRunningGapMs). */
  readonly maxRunningHeartbeatAgeMs: number;
  /** The longest time between two of this thread's own samples (over sampleMs: this thread was not scheduled either). */
  readonly maxSampleIntervalMs: number;
  /** When (Date.now()) sampling stopped. */
  readonly stoppedAt: number;
  /** Each late sample: when it came (Date.now()) and how much later than sampleMs after the one before. */
  readonly late: readonly { readonly at: number; readonly lateMs: number }[];
}

/**
 * This thread's starvation over time: at each sample, how late it came (beyond sampleMs).
 * since(t) is how much of that lateness fell after performance.now() time t (a late interval
 * that began before t counts for its part after t).
 */
function starvationClock(start: number) {
  /** Per sample: when it was taken, how late, and the lateness up to it in all. */
  const at: number[] = [start];
  const late: number[] = [0];
  const total: number[] = [0];
  return {
    sampled(now: number, lateMs: number): void {
      at.push(now);
      late.push(lateMs);
      total.push(total.at(-1)! + lateMs);
    },
    since(t: number): number {
      // The first sample after t (binary search: the soak takes 600 samples a minute).
      let lo = 0;
      let hi = at.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (at[mid]! <= t) lo = mid + 1;
        else hi = mid;
      }
      if (lo >= at.length) return 0;
      // That sample's lateness is the end of its interval: only the part after t counts.
      const first = Math.min(late[lo]!, at[lo]! - t);
      return first + total.at(-1)! - total[lo]!;
    },
  };
}

const port = parentPort!;
let stop: (() => SamplerResult) | undefined;

port.on('message', (m: SamplerStart | { type: 'stop' }) => {
  if (m.type === 'stop') {
    port.postMessage(stop!());
    port.close();
    return;
  }
  const start = performance.now();
  const startedAt = Date.now();
  const rising = m.rising.map((buffer) => {
    const ledger = DriverLedger.of(buffer);
    return { ledger, last: ledger.interrupts, lastRise: start, result: { maxGapMs: 0, maxGapEndedAt: startedAt, maxRunningGapMs: 0, rises: 0, heartbeatAgeMs: 0 } };
  });
  const beating = m.beating.map((b) => DriverLedger.of(b));
  const starvation = starvationClock(start);
  let lastSample = start;
  let maxHeartbeatAgeMs = 0;
  let maxRunningHeartbeatAgeMs = 0;
  let maxSampleIntervalMs = 0;
  const late: { at: number; lateMs: number }[] = [];
  const timer = setInterval(() => {
    const now = performance.now();
    maxSampleIntervalMs = Math.max(maxSampleIntervalMs, now - lastSample);
    starvation.sampled(now, Math.max(0, now - lastSample - m.sampleMs));
    if (now - lastSample > m.sampleMs) late.push({ at: Date.now(), lateMs: now - lastSample - m.sampleMs });
    lastSample = now;
    // The sampled threads have beaten before sampling starts (they are running): no age is no beat to count.
    for (const l of beating) {
      const age = l.heartbeatAgeMs ?? 0;
      maxHeartbeatAgeMs = Math.max(maxHeartbeatAgeMs, age);
      maxRunningHeartbeatAgeMs = Math.max(maxRunningHeartbeatAgeMs, age - starvation.since(now - age));
    }
    for (const r of rising) {
      r.result.heartbeatAgeMs = Math.max(r.result.heartbeatAgeMs, r.ledger.heartbeatAgeMs ?? 0);
      const c = r.ledger.interrupts;
      if (c === r.last) continue;
      if (now - r.lastRise > r.result.maxGapMs) r.result = { ...r.result, maxGapMs: now - r.lastRise, maxGapEndedAt: Date.now() };
      r.result.maxRunningGapMs = Math.max(r.result.maxRunningGapMs, now - r.lastRise - starvation.since(r.lastRise));
      r.lastRise = now;
      r.last = c;
      r.result.rises++;
    }
  }, m.sampleMs);
  port.postMessage(startedAt);
  stop = () => {
    clearInterval(timer);
    const now = performance.now();
    starvation.sampled(now, Math.max(0, now - lastSample - m.sampleMs));
    return {
      rising: rising.map((r) => ({
        ...r.result,
        maxGapMs: Math.max(r.result.maxGapMs, now - r.lastRise),
        maxRunningGapMs: Math.max(r.result.maxRunningGapMs, now - r.lastRise - starvation.since(r.lastRise)),
      })),
      maxHeartbeatAgeMs,
      maxRunningHeartbeatAgeMs,
      maxSampleIntervalMs,
      stoppedAt: Date.now(),
      late,
    };
  };
});
port.postMessage('ready');
