/**
 * Samples other devices' progress from a thread of its own (isolation.test):
 * the main thread is where a hung driver's device is taken back and its
 * replacement started, so a sampler there would time the supervisor's own
 * pauses, not whether the other drivers' threads kept going. Reads each
 * driver thread's ledger (shared memory) every sampleMs by this thread's
 * clock.
 */
import { parentPort } from 'node:worker_threads';
import { DriverLedger } from '../../actors/driver-ledger.js';

export interface SamplerStart {
  readonly type: 'start';
  readonly sampleMs: number;
  /** The driver thread whose interrupt count must keep rising. */
  readonly rising: SharedArrayBuffer;
  /** The driver threads whose heartbeat must stay fresh. */
  readonly beating: readonly SharedArrayBuffer[];
}

export interface SamplerResult {
  /** The longest time between two samples that saw the interrupt count rise (or since the last rise, at the stop). */
  readonly maxGapMs: number;
  /** When (Date.now()) that gap ended. */
  readonly maxGapEndedAt: number;
  readonly rises: number;
  /** The oldest heartbeat seen in any of the beating threads' ledgers. */
  readonly maxHeartbeatAgeMs: number;
  /** The oldest heartbeat seen in the rising thread's ledger (tells its own stalls from late samples). */
  readonly risingHeartbeatAgeMs: number;
  /** The longest time between two of this thread's own samples (over sampleMs: this thread was not scheduled either). */
  readonly maxSampleIntervalMs: number;
}

const port = parentPort!;
let stop: (() => SamplerResult) | undefined;

port.on('message', (m: SamplerStart | { type: 'stop' }) => {
  if (m.type === 'stop') {
    port.postMessage(stop!());
    port.close();
    return;
  }
  const rising = DriverLedger.of(m.rising);
  const beating = m.beating.map((b) => DriverLedger.of(b));
  let last = rising.interrupts;
  let lastRise = performance.now();
  let lastSample = lastRise;
  let result = { maxGapMs: 0, maxGapEndedAt: Date.now(), rises: 0, maxHeartbeatAgeMs: 0, risingHeartbeatAgeMs: 0, maxSampleIntervalMs: 0 };
  const timer = setInterval(() => {
    const now = performance.now();
    result.maxSampleIntervalMs = Math.max(result.maxSampleIntervalMs, now - lastSample);
    lastSample = now;
    // The sampled threads have beaten before sampling starts (they are running): no age is no beat to count.
    for (const l of beating) result.maxHeartbeatAgeMs = Math.max(result.maxHeartbeatAgeMs, l.heartbeatAgeMs ?? 0);
    result.risingHeartbeatAgeMs = Math.max(result.risingHeartbeatAgeMs, rising.heartbeatAgeMs ?? 0);
    const c = rising.interrupts;
    if (c === last) return;
    if (now - lastRise > result.maxGapMs) result = { ...result, maxGapMs: now - lastRise, maxGapEndedAt: Date.now() };
    lastRise = now;
    last = c;
    result.rises++;
  }, m.sampleMs);
  stop = () => {
    clearInterval(timer);
    return { ...result, maxGapMs: Math.max(result.maxGapMs, performance.now() - lastRise) };
  };
});
port.postMessage('ready');
