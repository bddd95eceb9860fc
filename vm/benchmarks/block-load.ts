/**
 * A load generator on the BlockDevice API itself (what NBD and programs
 * use): keeps `depth` random reads in flight, each a promise, each into a
 * buffer of its own over shared memory (allocShared: by reference, no copy,
 * whether the driver runs in this thread or in its own). The same load on a
 * driver in the main thread and on one in its own thread is what crossing
 * threads costs.
 */
import type { BlockDevice } from '../../drivers/block.js';
import { HISTOGRAM_US, histogramQuantile } from '../../drivers/nvme/perf.js';
import { allocShared } from '../../shm/mapping.js';

export interface BlockLoad {
  readonly ios: number;
  readonly errors: number;
  readonly iops: number;
  readonly p50Us: number;
  readonly p99Us: number;
  /** Process CPU (every thread: the driver's too) per I/O. */
  readonly cpuUsPerIo: number;
}

export async function blockReads(device: BlockDevice, options: { depth: number; bytes: number; seconds: number; warmupSeconds: number }): Promise<BlockLoad> {
  const { depth, bytes } = options;
  const blocks = bytes / device.blockSize;
  const span = Math.floor(device.blockCount / blocks);
  const histogram = new Uint32Array(HISTOGRAM_US + 1);
  let x = 0x2545f491;
  let measuring = false;
  let stopping = false;
  let ios = 0;
  let errors = 0;
  const lane = async (buffer: Uint8Array) => {
    while (!stopping) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      const started = performance.now();
      try {
        await device.read((x % span) * blocks, blocks, buffer);
      } catch {
        errors++;
      }
      if (measuring) {
        const us = Math.round((performance.now() - started) * 1000);
        histogram[us < HISTOGRAM_US ? us : HISTOGRAM_US]!++;
        ios++;
      }
    }
  };
  const memory = allocShared(depth * bytes);
  const lanes = Array.from({ length: depth }, (_, i) => lane(new Uint8Array(memory, i * bytes, bytes)));
  await new Promise((r) => setTimeout(r, options.warmupSeconds * 1000));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  measuring = true;
  await new Promise((r) => setTimeout(r, options.seconds * 1000));
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  stopping = true;
  await Promise.all(lanes);
  return { ios, errors, iops: ios / seconds, p50Us: histogramQuantile(histogram, ios, 0.5), p99Us: histogramQuantile(histogram, ios, 0.99), cpuUsPerIo: (cpu.user + cpu.system) / ios };
}
