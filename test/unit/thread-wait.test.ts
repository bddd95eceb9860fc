import test from 'ava';
import { Worker } from 'node:worker_threads';
import { currentThreadId, runQueueWaitMs } from '../../kernel/thread-wait.js';

// The watchdog takes a driver thread's run-queue wait out of its silence; these check the two reads it rests on.

test('the main thread\'s kernel thread id is the process id; a worker\'s is its own', async (t) => {
  t.is(currentThreadId(), process.pid);
  const worker = new Worker(
    "const { parentPort } = require('node:worker_threads'); const { readlinkSync } = require('node:fs');" +
      "parentPort.postMessage(Number(readlinkSync('/proc/thread-self').split('/').at(-1)));",
    { eval: true },
  );
  const tid = await new Promise<number>((resolve) => worker.once('message', resolve));
  await worker.terminate();
  t.true(Number.isInteger(tid) && tid !== process.pid, `worker tid ${tid}`);
});

test('a thread\'s run-queue wait is read in milliseconds, never goes back, and is undefined for a thread that is not ours', (t) => {
  const tid = currentThreadId()!;
  const first = runQueueWaitMs(tid);
  t.true(first !== undefined && first >= 0, `wait ${first}`);
  // Yield the CPU many times: each wake-up may add run-queue time, none may take it away.
  let last = first!;
  for (let i = 0; i < 50; i++) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    const now = runQueueWaitMs(tid)!;
    t.true(now >= last, `went back from ${last} to ${now}`);
    last = now;
  }
  // ns → ms: a thread that has run this long has not waited 1e6 times longer than the process has lived.
  t.true(last < process.uptime() * 1000 * 16, `wait ${last} ms in a process ${process.uptime()} s old`);
  t.is(runQueueWaitMs(2 ** 30), undefined);
});
