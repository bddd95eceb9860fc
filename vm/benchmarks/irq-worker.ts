// For vm/benchmarks/irq.ts: upci's round trips in a worker thread, as a driver
// runs in its own thread (workers/driver-thread-body.ts): its handler is woken by
// this worker's own event loop. Each message is a round's iteration count;
// the reply is that round's samples (a failure ends the worker with its error).
import { parentPort } from 'node:worker_threads';
import { upciRoundTrips } from './irq-round-trips.js';

parentPort!.on('message', async (iterations: number) => parentPort!.postMessage(await upciRoundTrips(iterations)));
