/**
 * The random-read load (vm/benchmarks/random-reads.ts) on the BlockDevice API
 * itself (what NBD and programs use), two ways:
 *  - blockReads: each read a promise, each lane reading into a buffer of
 *    its own over shared memory (allocShared), not registered: the driver
 *    bounces it (one copy), from this thread or across threads.
 *  - registeredReads: one registered buffer (allocBuffer), a lane per
 *    slice of it, each read RegisteredBuffer.read() with the lane as its
 *    tag, ended on the buffer's `ends`: no promise, no map, no copy.
 * The same load on a driver in the main thread and on one in its own
 * thread is what crossing threads costs.
 */
import type { BlockDevice } from '../../drivers/block.js';
import { RandomReads, type RandomReadOptions, type RandomReadResult } from './random-reads.js';
import { allocShared } from '../../shm/mapping.js';

export function blockReads(device: BlockDevice, options: RandomReadOptions): Promise<RandomReadResult> {
  const { depth, bytes } = options;
  const memory = allocShared(depth * bytes);
  const buffers = Array.from({ length: depth }, (_, lane) => new Uint8Array(memory, lane * bytes, bytes));
  const load = new RandomReads(device, options);
  return load.run((lane, lba, blocks) => {
    device.read(lba, blocks, buffers[lane]!).then(() => load.done(lane, true), () => load.done(lane, false));
    return true;
  });
}

export async function registeredReads(device: BlockDevice, options: RandomReadOptions): Promise<RandomReadResult> {
  const { depth, bytes } = options;
  const buffer = device.allocBuffer(depth * bytes);
  const load = new RandomReads(device, options);
  const ends = buffer.ends.subscribe((end) => load.done(end.tag, end.error === undefined));
  try {
    return await load.run((lane, lba, blocks) => buffer.read(lba, blocks, lane * bytes, lane));
  } finally {
    ends.unsubscribe();
    buffer.unregister();
  }
}
