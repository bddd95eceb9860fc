/**
 * The NVMe namespace's promise path (drivers/nvme/namespace.ts) on a fake
 * controller: a real QueuePair over pools of plain memory at bus addresses
 * above 4 GiB, and a fake device that reads the SQ ring, moves data by the
 * PRPs, and completes commands in reverse order. Writes and reads split in
 * chunks go through the command IDs' bounce buffers with a wait list (two
 * command IDs for three chunks), IDs come back in any order, a Flush has
 * no data, a discard is one DSM with its range in the bounce buffer. The
 * VM suite runs the same paths on QEMU's nvme (test/vm/nvme.test.ts).
 */
import test from 'ava';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaTag } from '../../pci/bus-dma.js';
import type { NvmeController } from '../../drivers/nvme/controller.js';
import { IoQueues, NvmeNamespace } from '../../drivers/nvme/namespace.js';
import { QueuePair } from '../../drivers/nvme/queue.js';
import { NVM } from '../../drivers/nvme/registers.js';

const BLOCK = 512;
const BLOCKS = 64;
const CHUNK = 8192;

/** Pools of plain memory at bus addresses from 0x1_0000_0000 on; `at(bus, n)` is what the device sees there. */
function memory() {
  let nextBus = 0x1_0000_0000;
  const regions: { bus: number; buffer: ArrayBuffer }[] = [];
  const tag = {
    createPool: ({ entrySize, entries }: { entrySize: number; entries: number }) => {
      const stride = Math.ceil(entrySize / 4096) * 4096;
      const buffer = new ArrayBuffer(stride * entries);
      const bus = nextBus;
      regions.push({ bus, buffer });
      nextBus += stride * entries;
      return {
        buffer, entrySize, entries, stride,
        busAddresses: Float64Array.from({ length: entries }, (_, i) => bus + i * stride),
        offsetOf: (i: number) => i * stride,
        sync: () => undefined, free: () => undefined,
      };
    },
  } as unknown as DmaTag;
  const at = (bus: number, n: number) => {
    const r = regions.find((x) => bus >= x.bus && bus + n <= x.bus + x.buffer.byteLength)!;
    return new Uint8Array(r.buffer, bus - r.bus, n);
  };
  return { tag, at };
}

function fixture() {
  const { tag, at } = memory();
  const bar = { write4: () => undefined } as unknown as BusSpace;
  // Depth 3: two command IDs.
  const q = new QueuePair(bar, tag, 1, 3, 4, -1);
  const controller = {
    ioQueues: [q], tag, usable: true,
    options: { commandTimeoutMs: 30_000 },
    identity: { datasetManagement: true },
    submitTo: (sq: QueuePair, cid: number, _admin: boolean, opcode: number, nsid: number, c10: number, c11: number, c12: number, c13: number, handler: (status: number, dw0: number, cid: number) => void) => {
      sq.submit(cid, opcode, nsid, c10, c11, c12, c13, handler);
      return true;
    },
    abandon: () => undefined,
  } as unknown as NvmeController;
  const io = new IoQueues(controller, CHUNK);
  const ns = new NvmeNamespace(io, 1, { blocks: BLOCKS, blockSize: BLOCK, metadataSize: 0 }, 'fake0n1');
  const disk = new Uint8Array(BLOCKS * BLOCK);
  const seen: { opcode: number; cid: number; cdw10: number; cdw11: number; cdw12: number; range?: number[] }[] = [];
  let sqHead = 0;
  let cqTail = 0;
  /** The device: takes every new SQ entry, then completes them newest first. */
  const serve = () => {
    const taken: number[] = [];
    while (sqHead !== q.sq.tail) {
      const w = q.sq.words.subarray(sqHead * 16, sqHead * 16 + 16);
      sqHead = (sqHead + 1) % q.depth;
      const opcode = w[0]! & 0xff;
      const cid = w[0]! >>> 16;
      const prp1 = w[6]! + w[7]! * 2 ** 32;
      const prp2 = w[8]! + w[9]! * 2 ** 32;
      const lba = w[10]! + w[11]! * 2 ** 32;
      const bytes = (w[12]! + 1) * BLOCK;
      const record: (typeof seen)[number] = { opcode, cid, cdw10: w[10]!, cdw11: w[11]!, cdw12: w[12]! };
      if (opcode === NVM.READ || opcode === NVM.WRITE) {
        // PRP1 to its page's end, then PRP2 (the chunks are at most two pages).
        const first = Math.min(bytes, 4096 - (prp1 % 4096));
        const pieces: [number, number, number][] = [[prp1, 0, first]];
        if (bytes > first) pieces.push([prp2, first, bytes - first]);
        for (const [bus, from, n] of pieces) {
          if (opcode === NVM.READ) at(bus, n).set(disk.subarray(lba * BLOCK + from, lba * BLOCK + from + n));
          else disk.set(at(bus, n), lba * BLOCK + from);
        }
      }
      if (opcode === NVM.DSM) record.range = [...new Uint32Array(at(prp1, 16).slice().buffer)];
      seen.push(record);
      taken.push(cid);
    }
    for (const cid of taken.reverse()) {
      const slot = cqTail % q.depth;
      const phase = Math.floor(cqTail / q.depth) % 2 === 0 ? 1 : 0;
      q.cq.words[slot * 4] = 0;
      q.cq.words[slot * 4 + 3] = cid | (phase << 16);
      cqTail++;
      q.reap();
    }
    return taken.length;
  };
  /** Serves until the promise settles. */
  const run = async <T>(p: Promise<T>): Promise<T> => {
    let settled = false;
    void p.finally(() => (settled = true)).catch(() => undefined);
    for (let i = 0; i < 100 && !settled; i++) {
      serve();
      await new Promise((r) => setImmediate(r));
    }
    return p;
  };
  return { ns, q, disk, seen, run };
}

test('a write and a read of 40 blocks go in three chunks through two command IDs, completed newest first; the data is on the disk and back', async (t) => {
  const { ns, q, disk, seen, run } = fixture();
  const data = Uint8Array.from({ length: 40 * BLOCK }, (_, i) => (i * 7 + 3) & 0xff);
  await run(ns.write(3, data));
  t.deepEqual(disk.subarray(3 * BLOCK, 43 * BLOCK), data);
  t.deepEqual(seen.map((c) => [c.opcode, c.cdw10, c.cdw12]), [[NVM.WRITE, 3, 15], [NVM.WRITE, 19, 15], [NVM.WRITE, 35, 7]]);
  const back = await run(ns.read(3, 40));
  t.deepEqual(back, data);
  t.is(q.outstanding, 0);
  t.is(q.cids.available, 2, 'every command ID back, whatever the completion order');
});

test('a flush is one Flush with no data; a discard is one DSM: one range (NR 0), AD set, the range in the command\'s bounce buffer', async (t) => {
  const { ns, seen, run } = fixture();
  await run(ns.flush());
  await run(ns.discard(5, 7));
  t.deepEqual(seen.map((c) => [c.opcode, c.cdw10, c.cdw11, c.cdw12]), [[NVM.FLUSH, 0, 0, 0], [NVM.DSM, 0, 1 << 2, 0]]);
  t.deepEqual(seen[1]!.range, [0, 7, 5, 0], 'context attributes, NLB, SLBA');
});
