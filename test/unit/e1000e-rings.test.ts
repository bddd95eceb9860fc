/**
 * e1000e's receive and transmit rings and its statistics on a stub BAR and
 * tag (no device): what the registers are programmed with, what the
 * descriptors hold, what comes back as the fake device sets DD, across
 * the ring's wrap. The VM suite runs the same paths on QEMU's e1000e
 * (test/vm/e1000e.test.ts).
 */
import test from 'ava';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaTag } from '../../pci/bus-dma.js';
import type { DriverCounters, RxFrame } from '../../drivers/packet.js';
import { accumulateStats, HARDWARE_COUNTERS } from '../../drivers/e1000e/mac.js';
import { REG, STATS } from '../../drivers/e1000e/registers.js';
import { RxRing } from '../../drivers/e1000e/rx-ring.js';
import { TxRing } from '../../drivers/e1000e/tx-ring.js';

const SIZE = 8;
const DD = 1;
const EOP = 2;

/** A DmaPool over plain memory at made-up bus addresses (above 2^32, so both halves of a descriptor's address matter). */
class FakePool {
  static nextBus = 0x1_2345_0000;
  readonly buffer: SharedArrayBuffer;
  readonly busAddresses: Float64Array;
  readonly stride: number;
  private readonly free: number[];
  constructor(readonly entrySize: number, readonly entries: number) {
    this.stride = entrySize;
    this.buffer = new SharedArrayBuffer(entrySize * entries);
    this.busAddresses = Float64Array.from({ length: entries }, (_, i) => FakePool.nextBus + i * entrySize);
    FakePool.nextBus += 0x100000;
    this.free = Array.from({ length: entries }, (_, i) => entries - 1 - i);
  }
  get available(): number {
    return this.free.length;
  }
  offsetOf(i: number): number {
    return i * this.entrySize;
  }
  alloc(): number {
    return this.free.pop() ?? -1;
  }
  release(i: number): void {
    this.free.push(i);
  }
  sync(): void {}
}

function rig() {
  const pools: FakePool[] = [];
  const tag = { createPool: ({ entrySize, entries }: { entrySize: number; entries: number }) => pools[pools.push(new FakePool(entrySize, entries)) - 1] } as unknown as DmaTag;
  const writes: [number, number][] = [];
  const regs = { TDH: 0 };
  const bar = {
    write4: (offset: number, value: number) => void writes.push([offset, value]),
    read4: (offset: number) => (offset === REG.TDH ? regs.TDH : 0),
  } as unknown as BusSpace;
  return { tag, bar, pools, writes, regs };
}

/** Descriptor `slot` of a ring's memory as its four words. */
const descriptor = (pool: FakePool, slot: number) => Array.from(new Uint32Array(pool.buffer, slot * 16, 4));

test('transmit: the register block programmed empty, each frame in the next descriptor, one TDT write per flush, buffers back in order across the wrap', (t) => {
  const { tag, bar, pools, writes, regs } = rig();
  const tx = new TxRing(bar, tag, SIZE);
  const [ring, buffers] = pools as [FakePool, FakePool];
  const counters = { frames: 0, bytes: 0 } as DriverCounters['tx'];
  const back: number[] = [];
  tx.start(counters, (b) => back.push(b));
  const bus = ring.busAddresses[0]!;
  t.deepEqual(writes, [[REG.TDBAL, bus % 2 ** 32], [REG.TDBAL + 4, Math.floor(bus / 2 ** 32)], [REG.TDBAL + 8, SIZE * 16], [REG.TDBAL + 0x10, 0], [REG.TDBAL + 0x18, 0]]);
  const words = new Uint32Array(ring.buffer);
  // Three rounds of five frames: the second and third cross slot 0.
  for (let round = 0; round < 3; round++) {
    writes.length = 0;
    for (let i = 0; i < 5; i++) tx.post(i, 60 + i);
    tx.flush();
    tx.flush();
    const tail = ((round + 1) * 5) % SIZE;
    t.deepEqual(writes, [[REG.TDBAL + 0x18, tail]], 'one TDT write, the tail');
    const first = (round * 5) % SIZE;
    const d = descriptor(ring, (first + 4) % SIZE);
    t.deepEqual(d.slice(0, 2), [buffers.busAddresses[4]! % 2 ** 32, Math.floor(buffers.busAddresses[4]! / 2 ** 32)]);
    t.is(d[2]! & 0xffff, 64);
    regs.TDH = (first + 3) % SIZE;
    t.is(tx.unsent(), 2);
    // The device did the first three: their buffers come back, the rest wait for DD.
    for (let i = 0; i < 3; i++) words[((first + i) % SIZE) * 4 + 3] = DD;
    t.is(tx.reclaim(), 3);
    for (let i = 3; i < 5; i++) words[((first + i) % SIZE) * 4 + 3] = DD;
    t.is(tx.reclaim(), 2);
    t.is(tx.reclaim(), 0, 'nothing past the tail');
  }
  t.deepEqual(back, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
  t.is(counters.frames, 15);
});

test('receive: the ring filled to size - 1, frames delivered by DD with their length, errors counted and their buffers reused, pending ones counted at the head', (t) => {
  const { tag, bar, pools, writes } = rig();
  const rx = new RxRing(bar, tag, SIZE, SIZE * 2);
  const [ring, buffers] = pools as [FakePool, FakePool];
  const counters = { frames: 0, bytes: 0, errors: 0, noBuffer: 0 } as DriverCounters['rx'];
  rx.start(counters);
  t.deepEqual(writes.at(-1), [REG.RDBAL + 0x18, SIZE - 1], 'RDT: all but one descriptor filled');
  const words = new Uint32Array(ring.buffer);
  const bufferAt = (slot: number) => buffers.busAddresses.indexOf(words[slot * 4]! + words[slot * 4 + 1]! * 2 ** 32);
  const frames: RxFrame[] = [];
  let head = 0;
  for (let round = 0; round < 3; round++) {
    const ids = [0, 1, 2, 3].map((i) => bufferAt((head + i) % SIZE));
    t.true(ids.every((id) => id >= 0), 'each descriptor holds a buffer of the pool');
    // 60 bytes, 61 with an error byte, 62, then one not done yet.
    words[head * 4 + 2] = 60;
    words[head * 4 + 3] = DD | EOP;
    words[((head + 1) % SIZE) * 4 + 2] = 61;
    words[((head + 1) % SIZE) * 4 + 3] = DD | EOP | (1 << 8);
    words[((head + 2) % SIZE) * 4 + 2] = 62;
    words[((head + 2) % SIZE) * 4 + 3] = DD | EOP;
    t.is(rx.pendingCompleted(), 3);
    t.is(rx.poll((f) => frames.push(f), 64), 2);
    t.deepEqual(frames.slice(-2).map((f) => f.length), [60, 62]);
    t.deepEqual(frames.slice(-2).map((f) => (f as unknown as { id: number }).id), [ids[0], ids[2]]);
    t.is(rx.pendingCompleted(), 0);
    head = (head + 3) % SIZE;
    for (const f of frames.splice(0)) f.release();
  }
  t.is(counters.frames, 6);
  t.is(counters.bytes, 3 * 122);
  t.is(counters.errors, 3);
  t.is(rx.held, 0, 'every buffer back in the pool or the ring');
});

test('statistics: each register added to the counter of its name, the octet pairs low half first', (t) => {
  const reads: number[] = [];
  const bar = {
    read4: (offset: number) => {
      reads.push(offset);
      return offset === STATS.goodOctetsReceived + 4 ? 2 : offset & 0xff;
    },
  } as unknown as BusSpace;
  const c = Object.fromEntries(HARDWARE_COUNTERS.map((name) => [name, 1]));
  accumulateStats(bar, c);
  accumulateStats(bar, c);
  t.is(c.goodOctetsReceived, 1 + 2 * (0x88 + 2 * 2 ** 32));
  t.is(c.goodPacketsReceived, 1 + 2 * 0x74);
  t.is(c.oversizeReceived, 1 + 2 * 0xac);
  t.true(reads.indexOf(STATS.goodOctetsTransmitted) === reads.indexOf(STATS.goodOctetsTransmitted + 4) - 1, 'GOTCL right before GOTCH');
  t.is(reads.length, 2 * (HARDWARE_COUNTERS.length + 2));
});
