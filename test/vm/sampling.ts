/** The main thread's side of test/vm/progress-sampler.ts: a sampler thread, started now (a new thread takes seconds to load in the guest). */
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { within } from '../support/bounded.js';
import type { SamplerResult, SamplerStart } from './progress-sampler.js';

export interface ProgressSampler {
  /** Samples these ledgers every `sampleMs` from now (as soon as the thread is up). */
  start(m: Omit<SamplerStart, 'type'>): void;
  stop(): Promise<SamplerResult>;
}

export function progressSampler(): ProgressSampler {
  const worker = new Worker(new URL('./progress-sampler.js', import.meta.url));
  // A test that fails before stop() must not leave this thread keeping ava's worker alive.
  worker.unref();
  const ready = once(worker, 'message');
  return {
    start: (m) => void ready.then(() => worker.postMessage({ type: 'start', ...m } satisfies SamplerStart)),
    stop: async () => {
      await ready;
      const result = once(worker, 'message');
      worker.postMessage({ type: 'stop' });
      const [r] = (await within(10_000, result, 'the progress sampler did not answer')) as [SamplerResult];
      await worker.terminate();
      return r;
    },
  };
}
