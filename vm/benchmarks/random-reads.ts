/**
 * The one random-read load generator (SPDK's `perf` shape): keeps `depth`
 * reads of `bytes` at random block-aligned LBAs in flight, starting the next
 * one in a lane as soon as its last ends, and measures a window after a
 * warm-up: IOPS, latency percentiles, process CPU time per I/O, and heap
 * bytes allocated per I/O. How a read is started is the caller's: the NVMe
 * driver's queue with its callbacks (vm/benchmarks/nvme-perf.ts), or any
 * BlockDevice's promise API (vm/benchmarks/block-load.ts). The generator's
 * own loop allocates nothing: the start times and the histogram are typed
 * arrays, the LBAs come from an xorshift state, done() is one bound method.
 */
import { PerformanceObserver } from 'node:perf_hooks';
import { getHeapSpaceStatistics } from 'node:v8';

export interface RandomReadOptions {
  /** Reads in flight: lanes 0..depth-1. */
  readonly depth: number;
  /** Bytes per read: a multiple of the block size. */
  readonly bytes: number;
  readonly seconds: number;
  readonly warmupSeconds: number;
}

export interface RandomReadResult {
  /** Reads that ended in the measured window. */
  readonly ios: number;
  readonly seconds: number;
  readonly iops: number;
  readonly p50Us: number;
  readonly p99Us: number;
  /** User + system CPU of the whole process (every thread: a driver's own too) per I/O. */
  readonly cpuUsPerIo: number;
  /** New-space bytes allocated per I/O in the measured window; meaningful only when `scavenges` is 0. */
  readonly heapBytesPerIo: number;
  /** Young-generation collections during the window (each means allocation the byte count missed). */
  readonly scavenges: number;
  /** Reads that ended in an error, in the warm-up too. */
  readonly errors: number;
}

/**
 * Starts one read of `blocks` blocks at `lba` for `lane` (0..depth-1), which
 * must end with `load.done(lane, ok)`, from a later turn or this one; false
 * when it cannot start now (the lane then stays idle).
 */
export type StartRead = (lane: number, lba: number, blocks: number) => boolean;

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

export class RandomReads {
  private readonly blocks: number;
  /** Block-aligned read positions: LBAs are 0, blocks, 2*blocks, ... below the device's end. */
  private readonly span: number;
  private readonly started: Float64Array;
  private readonly histogram = new Uint32Array(HISTOGRAM_US + 1);
  private x = 0x2545f491;
  private measuring = false;
  private stopping = false;
  private outstanding = 0;
  private ios = 0;
  private errors = 0;
  private start: StartRead = () => false;
  private finish: (() => void) | undefined;

  constructor(
    device: { readonly blockSize: number; readonly blockCount: number },
    private readonly options: RandomReadOptions,
  ) {
    const { depth, bytes } = options;
    if (!Number.isInteger(depth) || depth < 1) throw new RangeError(`random reads: depth ${depth} is not a positive integer`);
    if (!(bytes > 0) || bytes % device.blockSize !== 0) throw new RangeError(`random reads: ${bytes} bytes is not a positive multiple of the ${device.blockSize}-byte block`);
    this.blocks = bytes / device.blockSize;
    this.span = Math.floor(device.blockCount / this.blocks);
    if (this.span < 1) throw new RangeError(`random reads: a ${bytes}-byte read does not fit in ${device.blockCount} blocks`);
    this.started = new Float64Array(depth);
  }

  /** xorshift32: the next random read position, as an LBA. */
  private nextLba(): number {
    let x = this.x;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.x = x;
    return (x % this.span) * this.blocks;
  }

  private submit(lane: number): void {
    this.started[lane] = performance.now();
    // Counted before the start: a read may end (done()) inside it.
    this.outstanding++;
    if (!this.start(lane, this.nextLba(), this.blocks)) this.outstanding--;
  }

  /** The read of `lane` ended; `ok` false: with an error. The lane's next read starts here. */
  readonly done = (lane: number, ok: boolean): void => {
    this.outstanding--;
    if (this.measuring) {
      const us = Math.round((performance.now() - this.started[lane]!) * 1000);
      this.histogram[us < HISTOGRAM_US ? us : HISTOGRAM_US]!++;
      this.ios++;
    }
    if (!ok) this.errors++;
    if (!this.stopping) this.submit(lane);
    else if (this.outstanding === 0) this.finish?.();
  };

  /** Runs the load once: resolves after the window, when every lane's last read has ended. */
  run(start: StartRead): Promise<RandomReadResult> {
    this.start = start;
    const { depth, seconds, warmupSeconds } = this.options;
    return new Promise<RandomReadResult>((resolve) => {
      let scavenges = 0;
      const gc = new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) {
          if (this.measuring && (entry as unknown as { detail?: { kind?: number } }).detail?.kind === 1) scavenges++;
        }
      });
      gc.observe({ entryTypes: ['gc'] });
      for (let lane = 0; lane < depth; lane++) this.submit(lane);
      setTimeout(() => {
        const cpu0 = process.cpuUsage();
        const heap0 = newSpaceUsed();
        const t0 = performance.now();
        this.measuring = true;
        setTimeout(() => {
          this.measuring = false;
          const measured = (performance.now() - t0) / 1000;
          const cpu = process.cpuUsage(cpu0);
          const heap = newSpaceUsed() - heap0;
          const { ios, histogram } = this;
          this.stopping = true;
          this.finish = () => {
            gc.disconnect();
            resolve({
              ios, seconds: measured, iops: ios / measured, p50Us: histogramQuantile(histogram, ios, 0.5), p99Us: histogramQuantile(histogram, ios, 0.99),
              cpuUsPerIo: (cpu.user + cpu.system) / ios, heapBytesPerIo: Math.max(0, heap) / ios, scavenges, errors: this.errors,
            });
          };
          if (this.outstanding === 0) this.finish();
        }, seconds * 1000);
      }, warmupSeconds * 1000);
    });
  }
}
