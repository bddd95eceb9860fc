/** The main thread's side of test/vm/progress-sampler.ts: a sampler thread, started now (a new thread takes seconds to load in the guest). */
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { within } from '../support/bounded.js';
import type { SamplerResult, SamplerStart } from './progress-sampler.js';

export interface ProgressSampler {
  /** Samples these ledgers every `sampleMs` as soon as the thread is up; resolves with when (Date.now()) sampling began. */
  start(m: Omit<SamplerStart, 'type'>): Promise<number>;
  stop(): Promise<SampledProgress>;
}

export interface SampledProgress extends SamplerResult {
  /** What of a duration counts against a device or a thread: only what lies beyond the sampler's own longest interval (the guest's starvation). */
  beyondStarvation(ms: number): number;
}

/** The part of these late intervals (each ending `at`, `lateMs` long) that fell between two Date.now() times. */
const lateBetween = (late: readonly { at: number; lateMs: number }[], from: number, to: number) =>
  late.reduce((sum, { at, lateMs }) => sum + Math.max(0, Math.min(at, to) - Math.max(at - lateMs, from)), 0);

/**
 * This (the main) thread's own lateness, by the rule the host's watchdog counts silence with
 * (actors/driver-thread.ts): a timer every `periodMs`, and of each interval only what exceeds
 * `beyondMs` is taken as this thread not running. A witness of the time the watchdog leaves
 * uncounted, measured apart from it.
 */
export function mainThreadLateness(periodMs: number, beyondMs: number): { stop(): { starvedMs(from: number, to: number): number } } {
  const late: { at: number; lateMs: number }[] = [];
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    if (now - last > beyondMs) late.push({ at: Date.now(), lateMs: now - last - beyondMs });
    last = now;
  }, periodMs);
  return {
    stop: () => {
      clearInterval(timer);
      return { starvedMs: (from, to) => lateBetween(late, from, to) };
    },
  };
}

export function progressSampler(): ProgressSampler {
  const worker = new Worker(new URL('./progress-sampler.js', import.meta.url));
  // A test that fails before stop() must not leave this thread keeping ava's worker alive.
  worker.unref();
  const ready = once(worker, 'message');
  let started: Promise<number> | undefined;
  return {
    start: (m) => (started = ready.then(async () => {
      const answer = once(worker, 'message');
      worker.postMessage({ type: 'start', ...m } satisfies SamplerStart);
      const [at] = (await within(10_000, answer, 'the progress sampler did not start')) as [number];
      return at;
    })),
    stop: async () => {
      await (started ?? ready);
      const result = once(worker, 'message');
      worker.postMessage({ type: 'stop' });
      const [r] = (await within(10_000, result, 'the progress sampler did not answer')) as [SamplerResult];
      await worker.terminate();
      return { ...r, beyondStarvation: (ms) => Math.max(0, ms - r.maxSampleIntervalMs) };
    },
  };
}
