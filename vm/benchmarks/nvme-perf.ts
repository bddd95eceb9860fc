/**
 * upci's NVMe load generator (SPDK's `perf`): the random-read load
 * (vm/benchmarks/random-reads.ts) on one I/O queue of a namespace, each read
 * submitted straight to the queue with the same two callbacks, so that
 * nothing is allocated per I/O. A command id maps back to its lane through
 * a typed array.
 */
import type { NvmeNamespace } from '../../drivers/nvme/namespace.js';
import { RandomReads, type RandomReadOptions, type RandomReadResult } from './random-reads.js';

export interface LoadOptions extends RandomReadOptions {
  readonly queue?: number;
}

/** Command ids are 16 bits. */
const CIDS = 65536;

export async function randomReads(ns: NvmeNamespace, options: LoadOptions): Promise<RandomReadResult> {
  const queue = options.queue ?? 0;
  const load = new RandomReads(ns, options);
  const laneOf = new Uint32Array(CIDS);
  let refused = 0;
  const onDone = (status: number, _dw0: number, cid: number): void => load.done(laneOf[cid]!, status === 0);
  // The controller is gone: the submission is refused (a negative command id), and its lane stays idle.
  const onError = (): void => void refused++;
  const result = await load.run((lane, lba, blocks) => {
    const cid = ns.submitRead(queue, lba, blocks, onDone, onError);
    if (cid < 0) return false;
    laneOf[cid] = lane;
    return true;
  });
  return { ...result, errors: result.errors + refused };
}
