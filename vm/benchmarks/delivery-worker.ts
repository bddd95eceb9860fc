/**
 * For the interrupt benchmark: a worker that blocks in the event queue on one
 * eventfd, like the interrupt worker, and hands each wake-up to the main
 * thread by the mechanism it is told to use, so the two can be compared.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as libc from '../../kernel/libc.js';
import { eventQueue } from '../../workers/event-queue.js';
import { wakeMainThread } from '../../workers/main-thread-waker.js';

export interface DeliveryWorkerData {
  readonly fd: number;
  readonly mode: 'postMessage' | 'atomics' | 'pipe' | 'waker';
  /** mode 'waker': the main thread's waker (workers/main-thread-waker.ts). */
  readonly wakerId?: number;
  /** mode 'pipe': the write end the worker signals through; the main thread reads the other end in its event loop. */
  readonly pipeFd?: number;
  readonly sequence: SharedArrayBuffer;
  readonly rounds: number;
}

const { fd, mode, sequence, rounds, pipeFd, wakerId } = workerData as DeliveryWorkerData;
const queue = eventQueue();
queue.add(fd, 1);
const value = Buffer.alloc(8);
const word = new Int32Array(sequence);
for (let i = 0; i < rounds; i++) {
  queue.wait();
  libc.readSome(fd, value, 'read of the benchmark eventfd');
  if (mode === 'postMessage') {
    parentPort!.postMessage(i);
  } else if (mode === 'pipe') {
    libc.writeAll(pipeFd!, value.subarray(0, 1), 'write of the benchmark pipe');
  } else if (mode === 'waker') {
    wakeMainThread(wakerId!);
  } else {
    Atomics.add(word, 0, 1);
    Atomics.notify(word, 0);
  }
}
queue.close();
