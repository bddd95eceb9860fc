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
import { DriverLedger } from '../../workers/driver-ledger.js';
import { runQueueWaitMs } from '../../kernel/thread-wait.js';

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
  readonly rises: number;
  /**
   * The longest gap less what the driver's thread spent runnable but not on a CPU during it (the kernel's
   * run-queue count for the TID in its ledger): the part of a gap its thread could have run.
   */
  readonly maxRunnableGapMs: number;
  /** The oldest heartbeat seen in its ledger (tells its thread's own stalls from late samples). */
  readonly heartbeatAgeMs: number;
}

export interface SamplerResult {
  /** In the order of SamplerStart.rising. */
  readonly rising: readonly RisingResult[];
  /** The oldest heartbeat seen in any of the beating threads' ledgers. */
  readonly maxHeartbeatAgeMs: number;
  /**
   * The longest time between two of this thread's own samples: how long the guest left even this
   * light thread unscheduled (a loaded host stalls the whole VM). A device's gap or a thread's
   * heartbeat age counts only beyond it (the tests' rule: judged against what the guest could run).
   */
  readonly maxSampleIntervalMs: number;
  /** When (Date.now()) sampling stopped. */
  readonly stoppedAt: number;
}

/** The driver thread's run-queue wait so far; 0 where the kernel does not count it (then a gap counts whole). */
const waited = (ledger: DriverLedger): number => {
  const tid = ledger.tid;
  return (tid === undefined ? undefined : runQueueWaitMs(tid)) ?? 0;
};

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
    return { ledger, last: ledger.interrupts, lastRise: start, waitAtRise: waited(ledger), result: { maxGapMs: 0, maxGapEndedAt: startedAt, rises: 0, maxRunnableGapMs: 0, heartbeatAgeMs: 0 } };
  });
  const beating = m.beating.map((b) => DriverLedger.of(b));
  let lastSample = start;
  let maxHeartbeatAgeMs = 0;
  let maxSampleIntervalMs = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    maxSampleIntervalMs = Math.max(maxSampleIntervalMs, now - lastSample);
    lastSample = now;
    // The sampled threads have beaten before sampling starts (they are running): no age is no beat to count.
    for (const l of beating) maxHeartbeatAgeMs = Math.max(maxHeartbeatAgeMs, l.heartbeatAgeMs ?? 0);
    for (const r of rising) {
      r.result.heartbeatAgeMs = Math.max(r.result.heartbeatAgeMs, r.ledger.heartbeatAgeMs ?? 0);
      const c = r.ledger.interrupts;
      if (c === r.last) continue;
      if (now - r.lastRise > r.result.maxGapMs) r.result = { ...r.result, maxGapMs: now - r.lastRise, maxGapEndedAt: Date.now() };
      const wait = waited(r.ledger);
      r.result.maxRunnableGapMs = Math.max(r.result.maxRunnableGapMs, now - r.lastRise - (wait - r.waitAtRise));
      r.waitAtRise = wait;
      r.lastRise = now;
      r.last = c;
      r.result.rises++;
    }
  }, m.sampleMs);
  port.postMessage(startedAt);
  stop = () => {
    clearInterval(timer);
    const now = performance.now();
    return {
      rising: rising.map((r) => ({
        ...r.result,
        maxGapMs: Math.max(r.result.maxGapMs, now - r.lastRise),
        maxRunnableGapMs: Math.max(r.result.maxRunnableGapMs, now - r.lastRise - (waited(r.ledger) - r.waitAtRise)),
      })),
      maxHeartbeatAgeMs,
      maxSampleIntervalMs,
      stoppedAt: Date.now(),
    };
  };
});
port.postMessage('ready');
