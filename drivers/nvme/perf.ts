/**
 * upci's NVMe load generator (SPDK's `perf` shape): keeps `depth` random
 * reads outstanding on one I/O queue for a while, resubmitting from each
 * completion, and reports IOPS, latency percentiles, CPU time per I/O and
 * heap bytes allocated per I/O in the steady state. Everything the loop
 * touches is allocated before it starts: the completion handler, the start
 * times and the latency histogram are typed arrays, the random LBAs come
 * from an xorshift state.
 */
import { PerformanceObserver } from 'node:perf_hooks';
import { getHeapSpaceStatistics } from 'node:v8';
import type { NvmeNamespace } from './namespace.js';

export interface LoadOptions {
  readonly depth: number;
  /** Bytes per read: a multiple of the block size. */
  readonly bytes: number;
  readonly seconds: number;
  readonly warmupSeconds: number;
  readonly queue?: number;
}

export interface LoadResult {
  readonly ios: number;
  readonly seconds: number;
  readonly iops: number;
  readonly p50Us: number;
  readonly p99Us: number;
  /** User + system CPU of the whole process (driver, interrupt worker, generator) per I/O. */
  readonly cpuUsPerIo: number;
  /** New-space bytes allocated per I/O in the measured window; meaningful only when `scavenges` is 0. */
  readonly heapBytesPerIo: number;
  /** Young-generation collections during the window (each means allocation the byte count missed). */
  readonly scavenges: number;
  readonly errors: number;
}

/** Latencies are counted per microsecond up to this (and everything above in its last bucket). */
export const HISTOGRAM_US = 200_000;

/** The latency (µs) below which `q` of the `count` samples in `histogram` fall. */
export function histogramQuantile(histogram: Uint32Array, count: number, q: number): number {
  let seen = 0;
  for (let us = 0; us <= HISTOGRAM_US; us++) {
    seen += histogram[us]!;
    if (seen >= q * count) return us;
  }
  return HISTOGRAM_US;
}

function newSpaceUsed(): number {
  return getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_used_size ?? 0;
}

export function randomReads(ns: NvmeNamespace, options: LoadOptions): Promise<LoadResult> {
  const { depth, bytes } = options;
  const queue = options.queue ?? 0;
  const blocks = bytes / ns.blockSize;
  const span = Math.floor(ns.blockCount / blocks);
  const started = new Float64Array(65536);
  const histogram = new Uint32Array(HISTOGRAM_US + 1);
  let x = 0x2545f491;
  let measuring = false;
  let stopping = false;
  let outstanding = 0;
  let ios = 0;
  let errors = 0;
  let finish: (() => void) | undefined;

  const onError = (): void => {
    errors++;
    outstanding--;
  };
  const submit = (): void => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const lba = (x % span) * blocks;
    const cid = ns.submitRead(queue, lba, blocks, onDone, onError);
    if (cid < 0) return;
    started[cid] = performance.now();
    outstanding++;
  };
  function onDone(status: number, _dw0: number, cid: number): void {
    outstanding--;
    if (status !== 0) errors++;
    if (measuring) {
      const us = Math.round((performance.now() - started[cid]!) * 1000);
      histogram[us < HISTOGRAM_US ? us : HISTOGRAM_US]!++;
      ios++;
    }
    if (!stopping) submit();
    else if (outstanding === 0) finish?.();
  }

  return new Promise<LoadResult>((resolve) => {
    let scavenges = 0;
    const gc = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        if (measuring && (entry as unknown as { detail?: { kind?: number } }).detail?.kind === 1) scavenges++;
      }
    });
    gc.observe({ entryTypes: ['gc'] });
    for (let i = 0; i < depth; i++) submit();
    let cpu0: NodeJS.CpuUsage;
    let heap0 = 0;
    let t0 = 0;
    setTimeout(() => {
      cpu0 = process.cpuUsage();
      heap0 = newSpaceUsed();
      t0 = performance.now();
      measuring = true;
      setTimeout(() => {
        measuring = false;
        const seconds = (performance.now() - t0) / 1000;
        const cpu = process.cpuUsage(cpu0);
        const heap = newSpaceUsed() - heap0;
        stopping = true;
        finish = () => {
          gc.disconnect();
          resolve({
            ios, seconds, iops: ios / seconds, p50Us: histogramQuantile(histogram, ios, 0.5), p99Us: histogramQuantile(histogram, ios, 0.99),
            cpuUsPerIo: (cpu.user + cpu.system) / ios, heapBytesPerIo: Math.max(0, heap) / ios, scavenges, errors,
          });
        };
        if (outstanding === 0) finish();
      }, options.seconds * 1000);
    }, options.warmupSeconds * 1000);
  });
}
