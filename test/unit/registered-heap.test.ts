/**
 * Heap bytes per I/O on the registered-memory path across threads
 * (issue 21: the steady-state request path allocates nothing): 100,000
 * reads at depth 32 through a BlockProxy in this thread and the block
 * service's rings to a fake device served by a worker
 * (test/support/fake-block-worker.ts; its registered path allocates
 * nothing of its own), measured on both sides with the allocation meter
 * of vm/benchmarks (heap growth plus what each collection freed).
 *
 * What is left, and allowed, is one Atomics.waitAsync per wake-up of a
 * ring's waiting consumer (shm/ring.ts): V8 makes a result object and a
 * promise for each wait, and its settlement a reaction job; JavaScript has
 * no other way for a thread to sleep in its event loop until another
 * thread writes shared memory. A wake-up takes a batch, so it is
 * counted per wake-up (ringWakeUps), not per I/O; anything a request
 * allocates, however small, is over the bound after 100,000 of them.
 */
import test from 'ava';
import { Worker } from 'node:worker_threads';
import { BlockProxy, type BlockServiceSetup } from '../../services/block-service.js';
import { ringWakeUps } from '../../shm/ring.js';
import { startAllocationMeter, type Allocation } from '../../vm/benchmarks/allocation.js';
import { within } from '../support/bounded.js';
import type { WakeUps } from '../support/wake-ups.js';

const fakeWorker = new URL('../support/fake-block-worker.js', import.meta.url);
const DEPTH = 32;
const REQUEST = 4096;
const COUNT = 100_000;
/**
 * Heap bytes one wake-up of a ring's consumer may take: what
 * Atomics.waitAsync makes (its result object, its promise and the timeout
 * task's record: "(V8 API)" and "(EXTERNAL)" in the sampling profile) and
 * the `then` of RingConsumer.run (a reaction, a derived promise, a job):
 * 558 bytes a wake-up measured on node 20.20, with room to spare.
 */
const WAKE_UP_BYTES = 640;
/**
 * The meter's own noise over a window: its start and stop, a timer or a
 * message of the test's own, a collection's rounding (a few KiB measured
 * with no I/O at all in the window).
 */
const NOISE_BYTES = 64 * 1024;

/** `count` reads on a registered buffer of `proxy`, DEPTH at a time, a lane per 4 KiB; resolves with the ends that failed. */
function reads(proxy: BlockProxy, count: number): Promise<number> {
  const buffer = proxy.allocBuffer(DEPTH * REQUEST);
  const blocks = REQUEST / proxy.blockSize;
  const slots = proxy.blockCount / blocks;
  let started = 0;
  let ended = 0;
  let failed = 0;
  return new Promise<number>((resolve) => {
    const start = (lane: number) => {
      if (!buffer.read((started++ % slots) * blocks, blocks, lane * REQUEST, lane)) throw new Error(`no room for lane ${lane} with ${DEPTH} in flight`);
    };
    const ends = buffer.ends.subscribe((end) => {
      if (end.error !== undefined) failed++;
      if (++ended === count) {
        ends.unsubscribe();
        buffer.unregister();
        resolve(failed);
      } else if (started < count) {
        start(end.tag);
      }
    });
    for (let lane = 0; lane < DEPTH; lane++) start(lane);
  });
}

function sites(allocation: Allocation): string {
  return allocation.sites.slice(0, 6).map((s) => `${s.where} ${s.bytes}`).join('; ') || 'none sampled';
}

test.serial('registered memory across threads: 100,000 reads at depth 32 allocate nothing per I/O on either side, beyond one waitAsync per ring wake-up, and a wake-up takes a batch', async (t) => {
  t.timeout(120_000);
  const worker = new Worker(fakeWorker);
  t.teardown(() => worker.terminate());
  const replies: ((m: unknown) => void)[] = [];
  const setup = await within(20_000, new Promise<BlockServiceSetup>((resolve, reject) => {
    worker.once('error', reject);
    worker.on('message', (m: { type: string; setup?: BlockServiceSetup }) => {
      if (m.type === 'setup') resolve(m.setup!);
      else replies.shift()?.(m);
    });
  }), 'the fake block worker never sent its setup');
  const ask = <T>(): Promise<T> => within(10_000, new Promise<T>((resolve) => {
    replies.push(resolve as (m: unknown) => void);
    worker.postMessage({ type: 'meter' });
  }), 'the fake block worker never answered');
  const proxy = new BlockProxy(setup);
  t.teardown(() => proxy.close('test over'));

  // Warm up: the code optimized, the registration of each buffer's memory sent and the rings' first waits made.
  t.is(await reads(proxy, COUNT), 0);
  const buffer = proxy.allocBuffer(DEPTH * REQUEST);
  buffer.unregister();

  await ask();
  const here = ringWakeUps();
  const stop = startAllocationMeter(true);
  const failed = await reads(proxy, COUNT);
  const consumer = stop();
  const wokenHere = ringWakeUps();
  const { allocation: provider, wakeUps: wokenThere } = await ask<{ allocation: Allocation; wakeUps: WakeUps }>();
  t.is(failed, 0);

  const consumerWakeUps = wokenHere.notified + wokenHere.recovered - here.notified - here.recovered;
  const consumerBound = NOISE_BYTES + WAKE_UP_BYTES * consumerWakeUps;
  t.log(`this thread (the proxy): ${consumer.bytes} bytes in ${COUNT} reads (${(consumer.bytes / COUNT).toFixed(2)} B/I/O), ${consumerWakeUps} wake-ups (${(COUNT / consumerWakeUps).toFixed(1)} I/Os each), ${consumer.collections} collections; sites: ${sites(consumer)}`);
  // The worker's wake-up count runs from its start (the warm-up included): a bound for the window, not less.
  const providerWakeUps = wokenThere.notified + wokenThere.recovered;
  t.log(`the driver's thread (the service): ${provider.bytes} bytes (${(provider.bytes / COUNT).toFixed(2)} B/I/O), at most ${providerWakeUps} wake-ups since it started, ${provider.collections} collections; sites: ${sites(provider)}`);
  // Requests started from `ends` go out together at the end of each completion drain, and the fake ends each batch together: a wake-up per DEPTH reads each way, not one per read.
  t.true(consumerWakeUps <= 2 * COUNT / DEPTH, `${consumerWakeUps} wake-ups of this thread for ${COUNT} reads at depth ${DEPTH}: the ring hand-offs are not batched`);
  t.true(consumer.bytes <= consumerBound, `this thread allocated ${consumer.bytes} bytes over ${COUNT} reads, more than ${consumerBound} (${NOISE_BYTES} of noise and ${WAKE_UP_BYTES} per wake-up): something allocates per request`);
  t.true(provider.bytes <= NOISE_BYTES + WAKE_UP_BYTES * providerWakeUps, `the driver's thread allocated ${provider.bytes} bytes over ${COUNT} reads: something allocates per request`);
});
