// Interrupt round-trip benchmark: edu's MSI (write the raise register, the
// event reaches the handler, ack), for a C program doing it with raw VFIO and
// an eventfd read (vm/benchmarks/irq-ref.c) and for upci's path (a uv_poll
// watcher in the handler's own event loop -> RxJS), with the handler in the
// main thread and in a worker thread, where a driver runs (issue 13).
//
//   npm run bench:irq            (npm run build && node dist/vm/benchmarks/irq.js [--quick] [--cpus N])
import { execFileSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { benchmarkMain, eduAddress, percentiles } from './harness.js';
import { micros, upciRoundTrips } from './irq-round-trips.js';

/** One round of upci's round trips in the worker thread (irq-worker.ts); the worker's error rejects. */
function workerRoundTrips(worker: Worker, iterations: number): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const fail = (e: Error) => reject(e);
    worker.once('error', fail);
    worker.once('message', (samples: number[]) => {
      worker.off('error', fail);
      resolve(samples);
    });
    worker.postMessage(iterations);
  });
}

/** The fixed cost of one system call through koffi: read(2) on an empty non-blocking eventfd. */
async function syscallCost(rounds: number): Promise<number[]> {
  const libc = await import('../../kernel/libc.js');
  const fd = libc.eventfd(libc.EFD_NONBLOCK);
  const value = Buffer.alloc(8);
  const samples: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = process.hrtime.bigint();
    libc.readSome(fd, value, 'read of an empty eventfd');
    samples.push(micros(t0));
  }
  libc.close(fd);
  return samples;
}

/**
 * Every path runs in `rounds` short bursts, interleaved, and each path's
 * samples are pooled: the load of this shared machine drifts by a factor of
 * two within a minute, and a path measured only while it was high would be
 * compared with one measured while it was low.
 */
async function guest(refBinary: string, quick: boolean): Promise<number> {
  const rounds = quick ? 2 : 10;
  const perRound = 500;
  const iterations = rounds * perRound;
  const reference = (shape: 'direct' | 'threaded') => async () =>
    JSON.parse(execFileSync(refBinary, [eduAddress, String(perRound), shape], { encoding: 'utf8' })) as number[];
  const paths = {
    c: reference('direct'),
    cThreaded: reference('threaded'),
    upci: () => upciRoundTrips(perRound),
    upciWorker: () => workerRoundTrips(driverThread, perRound),
    syscall: () => syscallCost(perRound),
  };
  type Path = keyof typeof paths;
  const driverThread = new Worker(new URL('./irq-worker.js', import.meta.url));
  await upciRoundTrips(100); // warm-up: JIT and worker start
  await workerRoundTrips(driverThread, 100);
  const pooled = Object.fromEntries(Object.keys(paths).map((k) => [k, [] as number[]])) as Record<Path, number[]>;
  for (let r = 0; r < rounds; r++) {
    for (const [name, run] of Object.entries(paths) as [Path, () => Promise<number[]>][]) pooled[name].push(...await run());
  }
  await driverThread.terminate();
  const { c, cThreaded, upci, upciWorker, syscall } =
    Object.fromEntries(Object.entries(pooled).map(([k, v]) => [k, percentiles(v)])) as Record<Path, { median: number; p99: number }>;
  const f = (n: number) => n.toFixed(1);
  process.stdout.write([
    `Interrupt round trip on edu ${eduAddress}, MSI, ${iterations} iterations each, in ${rounds} interleaved rounds (TCG guest, µs)`,
    '',
    '| path | median | p99 |',
    '|---|---:|---:|',
    `| (a) C, raw VFIO: eventfd read(2) in the handler's thread | ${f(c.median)} | ${f(c.p99)} |`,
    `| (a') C, raw VFIO, upci's shape: epoll waiter thread → futex → handler thread | ${f(cThreaded.median)} | ${f(cThreaded.p99)} |`,
    `| (b) upci: handler in the main thread, woken by its event loop (uv_poll on the eventfd) → RxJS handler | ${f(upci.median)} | ${f(upci.p99)} |`,
    `| (c) upci: handler in a worker thread (a driver thread), woken by that worker's event loop → RxJS handler | ${f(upciWorker.median)} | ${f(upciWorker.p99)} |`,
    `| ratio (b) / (a) | ${(upci.median / c.median).toFixed(2)} | ${(upci.p99 / c.p99).toFixed(2)} |`,
    `| ratio (c) / (a) | ${(upciWorker.median / c.median).toFixed(2)} | ${(upciWorker.p99 / c.p99).toFixed(2)} |`,
    `| ratio (c) / (a') | ${(upciWorker.median / cThreaded.median).toFixed(2)} | ${(upciWorker.p99 / cThreaded.p99).toFixed(2)} |`,
    `| (c) p99 / its median | | ${(upciWorker.p99 / upciWorker.median).toFixed(2)} |`,
    '',
    `One system call through koffi (read(2) of an empty eventfd): median ${f(syscall.median)} µs, p99 ${f(syscall.p99)} µs.`,
    '',
  ].join('\n'));
  return 0;
}

// Guest vCPUs: 2 by default (--cpus N), so the worker and the main thread can run at once, as on real machines.
await benchmarkMain({ name: 'irq', reference: 'irq-ref.c', script: 'irq.js', cpus: 2 }, guest);
