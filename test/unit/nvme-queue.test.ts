/**
 * The NVMe queue pair's reset bookkeeping on a stub BAR and tag (no
 * controller): submissions while the queue is held reach the ring only at
 * resubmitOutstanding, without counting as a retry; the commands the
 * controller had are posted again, counted; the drop fault loses a
 * command's posts once or always. The VM suite runs the same paths on
 * QEMU's nvme (test/vm/nvme.test.ts, command timeouts).
 */
import test from 'ava';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaTag } from '../../pci/bus-dma.js';
import { QueuePair } from '../../drivers/nvme/queue.js';
import { REG } from '../../drivers/nvme/registers.js';

const DEPTH = 8;
const SQ_DOORBELL = REG.DOORBELLS + 2 * 1 * 4; // queue 1, stride 4

/** Pools over plain memory at made-up bus addresses; the BAR records doorbell writes. */
function queue(): { q: QueuePair; doorbells: number[]; sqWords: () => Uint32Array } {
  let nextBus = 0x10000;
  const pools: { buffer: ArrayBuffer }[] = [];
  const tag = {
    createPool: ({ entrySize, entries }: { entrySize: number; entries: number }) => {
      const pool = { buffer: new ArrayBuffer(entrySize * entries), busAddresses: Float64Array.from({ length: entries }, (_, i) => nextBus + i * entrySize), free: () => undefined };
      nextBus += entrySize * entries;
      pools.push(pool);
      return pool;
    },
  } as unknown as DmaTag;
  const doorbells: number[] = [];
  const bar = { write4: (offset: number, value: number) => { if (offset === SQ_DOORBELL) doorbells.push(value); } } as unknown as BusSpace;
  const q = new QueuePair(bar, tag, 1, DEPTH, 4, -1);
  return { q, doorbells, sqWords: () => new Uint32Array(pools[0]!.buffer) };
}

const noop = () => undefined;
/** Submits a Read with `tag` in CDW10; returns its command ID. */
function submit(q: QueuePair, tag: number): number {
  const cid = q.cids.take();
  q.prps[0] = 0x1000;
  q.prps[1] = 0;
  q.submit(cid, 0x02, 1, tag, 0, 0, 0, noop);
  q.deadlines[cid] = 1000;
  return cid;
}
/** CDW10 of the SQ ring's entries [0, n): which commands reached the ring, in order. */
const ring = (words: Uint32Array, n: number) => Array.from({ length: n }, (_, slot) => words[slot * 16 + 10]);

test('a queue held for a reset posts nothing; resubmitOutstanding posts what the controller had (a retry) and what came meanwhile (not one)', (t) => {
  const { q, doorbells, sqWords } = queue();
  const a = submit(q, 0xa);
  const b = submit(q, 0xb);
  t.deepEqual(doorbells, [1, 2]);
  q.hold();
  const c = submit(q, 0xc);
  t.deepEqual(doorbells, [1, 2], 'nothing rings while held');
  t.is(q.submitted, 2);
  q.restart();
  const posted = q.resubmitOutstanding(5000);
  t.deepEqual(posted, { again: 2, held: 1 });
  t.deepEqual(doorbells, [1, 2, 1, 2, 3], 'from slot 0 of the restarted ring, each command once');
  t.deepEqual(ring(sqWords(), 3).sort(), [0xa, 0xb, 0xc]);
  t.deepEqual([q.retries[a], q.retries[b], q.retries[c]], [1, 1, 0], 'only the commands the controller had went through the reset');
  t.deepEqual([q.deadlines[a], q.deadlines[b], q.deadlines[c]], [5000, 5000, 5000]);
  submit(q, 0xd);
  t.is(doorbells.at(-1), 4, 'no longer held');
});

test('a command cancelled while held is not posted at the resubmission', (t) => {
  const { q, doorbells } = queue();
  q.hold();
  const a = submit(q, 0xa);
  q.cancel(a, 0x7fff);
  q.restart();
  t.deepEqual(q.resubmitOutstanding(5000), { again: 0, held: 0 });
  t.deepEqual(doorbells, []);
  t.is(q.outstanding, 0);
});

test('the drop fault loses a command\'s first post only, or every post with dropResubmissions, until it is cancelled', (t) => {
  for (const always of [false, true]) {
    const { q, doorbells, sqWords } = queue();
    q.dropCid = 0;
    q.dropResubmissions = always;
    const lost = submit(q, 0xa); // command ID 0: the free list hands out 0 first
    t.is(lost, 0);
    submit(q, 0xb);
    t.deepEqual(doorbells, [1], 'the lost command rang nothing; the next one did');
    t.is(ring(sqWords(), 1)[0], 0xb);
    q.hold();
    q.restart();
    t.deepEqual(q.resubmitOutstanding(5000), { again: 2, held: 0 }, 'both count as re-issued: the driver believes both were posted');
    t.deepEqual(doorbells, always ? [1, 1] : [1, 1, 2], always ? 'dropped again' : 'the re-issue reached the ring');
    q.cancel(lost, 0x7ffe);
    t.is(q.dropCid, -1, 'the fault ends with the command');
    t.is(q.outstanding, 1);
  }
});
