import test from 'ava';
import { spawnSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { createMainThreadWaker, wakeMainThread } from '../../workers/main-thread-waker.js';
import { within } from '../support/bounded.js';

const wakerModule = new URL('../../workers/main-thread-waker.js', import.meta.url).href;

/**
 * A worker that wakes `id` `times` times, as the interrupt worker does. With
 * `blockMain` the main thread is held in Atomics.wait until the worker has
 * woken it for the last time, so that its loop cannot run in between.
 */
async function wakeFromWorker(id: number, times: number, blockMain = false): Promise<void> {
  const done = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(
    `const { workerData } = await import('node:worker_threads');
     const { wakeMainThread } = await import(${JSON.stringify(wakerModule)});
     for (let i = 0; i < ${times}; i++) wakeMainThread(${id});
     Atomics.store(workerData, 0, 1);
     Atomics.notify(workerData, 0);`,
    { eval: true, workerData: done },
  );
  const exited = exitOf(worker);
  if (blockMain && Atomics.wait(done, 0, 0, 10_000) === 'timed-out') throw new Error('the waking worker did not finish its wakes within 10 s');
  await within(10_000, exited, 'the waking worker never exited');
}

function exitOf(worker: Worker): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    worker.once('error', reject);
    worker.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`worker exited with ${code}`))));
  });
}

const tick = () => new Promise((r) => setTimeout(r, 50));

test('a wake from a worker runs the callback on the main thread', async (t) => {
  let calls = 0;
  let resolve!: () => void;
  const called = new Promise<void>((r) => (resolve = r));
  const waker = createMainThreadWaker(() => {
    calls++;
    resolve();
  });
  try {
    await wakeFromWorker(waker.id, 1);
    await within(10_000, called, 'the callback never ran');
    t.is(calls, 1);
  } finally {
    waker.close();
  }
});

test('wakes that come close together coalesce, and the callback still runs after the last', async (t) => {
  let calls = 0;
  const waker = createMainThreadWaker(() => calls++);
  try {
    await wakeFromWorker(waker.id, 1000, true);
    await tick();
    t.is(calls, 1, 'one callback for 1000 wakes the loop could not run between');
    wakeMainThread(waker.id);
    await tick();
    t.is(calls, 2);
  } finally {
    waker.close();
  }
});

test('promise jobs a callback queues run before the loop runs any other callback', async (t) => {
  // Node drains promise jobs in every loop iteration's check phase, so "before the loop sleeps"
  // holds with or without a callback scope. What napi_make_callback adds is that the jobs run
  // as the callback returns, before the next callback of the same poll pass: two wakers woken
  // together run in one pass of the loop's async handles, and the first one's job must come
  // before the second one's callback (under napi_call_function it would come after both).
  const order: string[] = [];
  let resolveJob!: () => void;
  void new Promise<void>((r) => (resolveJob = r)).then(() => order.push('job'));
  let secondRan!: () => void;
  const secondDone = new Promise<void>((r) => (secondRan = r));
  const first = createMainThreadWaker(() => {
    order.push('first');
    resolveJob();
  });
  const second = createMainThreadWaker(() => {
    order.push('second');
    secondRan();
  });
  // cells[0]: main says "wake now"; cells[1]: the worker has woken both; cells[2]: main lets it exit.
  const cells = new Int32Array(new SharedArrayBuffer(12));
  const worker = new Worker(
    `const { workerData } = await import('node:worker_threads');
     const { wakeMainThread } = await import(${JSON.stringify(wakerModule)});
     if (Atomics.wait(workerData, 0, 0, 10_000) === 'timed-out') throw new Error('never told to wake');
     wakeMainThread(${first.id});
     wakeMainThread(${second.id});
     Atomics.store(workerData, 1, 1);
     Atomics.notify(workerData, 1);
     Atomics.wait(workerData, 2, 0, 10_000);`,
    { eval: true, workerData: cells },
  );
  const exited = exitOf(worker);
  try {
    await within(10_000, new Promise((r) => worker.once('online', r)), 'the waking worker never came online');
    Atomics.store(cells, 0, 1);
    Atomics.notify(cells, 0);
    // Held here, the loop cannot run either callback until both wakes are pending.
    if (Atomics.wait(cells, 1, 0, 10_000) === 'timed-out') throw new Error('the worker did not wake both wakers within 10 s');
    await within(10_000, secondDone, 'the second waker\'s callback never ran');
    t.deepEqual(order, ['first', 'job', 'second']);
  } finally {
    Atomics.store(cells, 2, 1);
    Atomics.notify(cells, 2);
    await within(10_000, exited, 'the waking worker never exited');
    first.close();
    second.close();
  }
});

test('after close() the callback never runs and wakes do nothing; closing twice is harmless', async (t) => {
  let calls = 0;
  const waker = createMainThreadWaker(() => calls++);
  waker.close();
  waker.close();
  await wakeFromWorker(waker.id, 10);
  wakeMainThread(waker.id);
  await tick();
  t.is(calls, 0);
});

test('a waker does not keep the process alive, and a throwing callback reaches uncaughtException', (t) => {
  const script = `
    const { createMainThreadWaker, wakeMainThread } = await import(${JSON.stringify(wakerModule)});
    createMainThreadWaker(() => {}); // left open: the process must still exit
    process.on('uncaughtException', (e) => { console.log('caught: ' + e.message); });
    const waker = createMainThreadWaker(() => { throw new Error('driver bug'); });
    wakeMainThread(waker.id);
    setTimeout(() => {}, 100);`;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000, encoding: 'utf8' });
  t.is(run.signal, null, 'not killed by the timeout');
  t.is(run.status, 0, run.stderr);
  t.is(run.stdout.trim(), 'caught: driver bug');
});

test('bad arguments are refused with the function named', (t) => {
  // @ts-expect-error a callback is required
  t.throws(() => createMainThreadWaker(42), { message: /create\(callback\): callback must be a function/ });
  // @ts-expect-error an id is a number
  t.throws(() => wakeMainThread('one'), { message: /wake\(id\): id must be a number/ });
});
