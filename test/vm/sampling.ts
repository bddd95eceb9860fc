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
  /** How long the sampler thread was starved (late beyond sampleMs) between two Date.now() times: a late interval counts for its part between them. */
  starvedMs(from: number, to: number): number;
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
      return {
        ...r,
        starvedMs: (from, to) => r.late.reduce((sum, { at, lateMs }) => sum + Math.max(0, Math.min(at, to) - Math.max(at - lateMs, from)), 0),
      };
    },
  };
}
