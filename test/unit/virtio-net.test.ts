/**
 * virtio-net's queues (drivers/virtio-net/rx-queue.ts, tx-queue.ts) on a
 * split ring whose device side is a model reading the ring memory
 * (test/support/fake-virtio-device.ts), over DMA pools in plain shared
 * memory: the 12-byte virtio_net_hdr in front of every frame both ways,
 * receive buffers refilled in batches from a pool a consumer may hold
 * frames of, transmit buffers given back in whatever order the device
 * completes, and what a stop counts as lost.
 */
import test from 'ava';
import type { DmaTag } from '../../pci/bus-dma.js';
import { DRIVER_COUNTERS, type DriverCounters, type RxFrame } from '../../drivers/packet.js';
import { SplitRing } from '../../drivers/virtio/split-ring.js';
import { NET_HDR, RX_BUFFER, RxQueue } from '../../drivers/virtio-net/rx-queue.js';
import { TxQueue } from '../../drivers/virtio-net/tx-queue.js';
import { FakeVirtioDevice } from '../support/fake-virtio-device.js';
import { MemoryTag } from '../support/memory-tag.js';

function counters(): DriverCounters {
  const zero = (names: readonly string[]) => Object.fromEntries(names.map((n) => [n, 0]));
  return { rx: zero(DRIVER_COUNTERS.rx), tx: zero(DRIVER_COUNTERS.tx), vectors: zero(DRIVER_COUNTERS.vectors), hardware: {} } as unknown as DriverCounters;
}

function queue(size: number) {
  const tag = new MemoryTag();
  const memory = new SharedArrayBuffer(SplitRing.bytes(size));
  const device = new FakeVirtioDevice(memory, size);
  const ring = new SplitRing(size, memory, 0, 0x10_0000, () => device.kicks++);
  device.usedAt = ring.usedBus - ring.descBus;
  return { tag, device, ring, counters: counters() };
}

const frameOf = (length: number, seed: number) => Uint8Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff);

test('receive: buffers of header + 1514 bytes, device-writable; a frame is delivered from past the 12-byte header, by reference; a length outside 14..1514 is an error and its buffer goes back', (t) => {
  const { tag, device, ring, counters: c } = queue(8);
  const rx = new RxQueue(ring, tag as unknown as DmaTag, 16);
  const got: RxFrame[] = [];
  rx.start(c.rx, (f) => got.push(f));
  const posted = device.take();
  t.is(posted.length, 8, 'the whole queue filled');
  t.is(device.kicks, 1, 'one doorbell for the batch');
  t.true(posted.every(([, bufs]) => bufs.length === 1 && bufs[0]!.length === RX_BUFFER && bufs[0]!.write));
  t.is(RX_BUFFER, 1526);
  // The device writes a header (num_buffers 1) and a frame into two buffers, and returns a third holding only 10 bytes of frame.
  const frames = [frameOf(60, 1), frameOf(1514, 2)];
  frames.forEach((frame, i) => {
    const [head, [buf]] = posted[i]!;
    const bytes = tag.bytes(buf!.address, NET_HDR + frame.length);
    bytes.fill(0, 0, NET_HDR);
    bytes[10] = 1;
    bytes.set(frame, NET_HDR);
    device.complete(head, NET_HDR + frame.length);
  });
  device.complete(posted[2]![0], NET_HDR + 10);
  t.is(rx.receive(), 3);
  t.is(got.length, 2);
  got.forEach((f, i) => {
    t.is(f.length, frames[i]!.length);
    t.deepEqual(f.bytes.subarray(0, f.length), frames[i]!);
    t.is(f.bytes.buffer, tag.bytes(posted[i]![1][0]!.address, 1).buffer, 'a view of the receive buffer itself, not a copy');
  });
  t.like(c.rx, { frames: 2, bytes: 60 + 1514, errors: 1 });
  t.is(device.take().length, 3, 'the three returned descriptors were posted again, the errored one\'s buffer with them');
  t.is(rx.held, 2);
});

test('receive refill: in batches from the pool while the consumer holds frames; a dry pool is counted; a release refills only once the queue ran low; stale after close', (t) => {
  const { tag, device, ring, counters: c } = queue(8);
  const rx = new RxQueue(ring, tag as unknown as DmaTag, 12);
  const got: RxFrame[] = [];
  rx.start(c.rx, (f) => got.push(f));
  const returns = (chains: ReturnType<typeof device.take>) => {
    for (const [head] of chains) device.complete(head, NET_HDR + 60);
  };
  const first = device.take();
  returns(first.slice(0, 6));
  let kicks = device.kicks;
  rx.receive();
  t.is(got.length, 6);
  t.is(device.kicks, kicks + 1, 'one doorbell for the refill');
  const second = device.take();
  t.is(second.length, 4, 'the pool\'s 4 spare buffers, then it ran dry');
  t.is(c.rx.noBuffer, 1);
  t.is(rx.held, 6);
  // The consumer gives 2 back (one of them twice): the queue holds 6 of 8, so they wait for the next receive.
  got[0]!.release();
  got[1]!.release();
  got[1]!.release();
  t.is(device.take().length, 0, 'no refill while the queue is at least half full');
  returns(first.slice(6));
  rx.receive();
  const third = device.take();
  t.is(third.length, 2, 'the 2 released buffers went in at that receive\'s refill');
  t.is(c.rx.noBuffer, 2);
  // Every posted buffer returned and held: the queue is empty, and a release refills at once.
  returns([...second, ...third]);
  rx.receive();
  t.is(got.length, 14);
  t.is(rx.held, 12);
  t.is(device.take().length, 0);
  kicks = device.kicks;
  got[2]!.release();
  const fourth = device.take();
  t.is(fourth.length, 1);
  t.is(device.kicks, kicks + 1);
  // The device returns it, nobody sees it: lost at close; a release after close does nothing.
  returns(fourth);
  t.is(rx.close(), 1);
  got[3]!.release();
  t.is(device.take().length, 0);
  t.is(got.length, 14, 'nothing delivered at close');
});

test('transmit: each frame a chain of the zeroed 12-byte header and its buffer, both device-readable; one doorbell per batch; buffers back in the device\'s order; bad buffers refused; what the device kept is lost at close', (t) => {
  const { tag, device, ring, counters: c } = queue(8);
  const tx = new TxQueue(ring, tag as unknown as DmaTag);
  const back: number[] = [];
  tx.start(c.tx, (b) => back.push(b));
  const { entries, stride, buffer } = tx.transmitBuffers;
  t.is(entries, 4, 'two descriptors a frame: half as many buffers as descriptors');
  t.true(stride >= 1514);
  const frames = [frameOf(60, 3), frameOf(1514, 4), frameOf(100, 5), frameOf(61, 6)];
  frames.forEach((f, i) => {
    new Uint8Array(buffer, i * stride, f.length).set(f);
    tx.post(i, f.length);
  });
  t.is(device.kicks, 0, 'nothing told before the flush');
  tx.flush();
  tx.flush();
  t.is(device.kicks, 1, 'one doorbell for the batch');
  const chains = device.take();
  t.is(chains.length, 4);
  chains.forEach(([, [hdr, data]], i) => {
    t.deepEqual(hdr, { address: hdr!.address, length: NET_HDR, write: false });
    t.deepEqual(tag.bytes(hdr!.address, NET_HDR), new Uint8Array(NET_HDR), 'no offload asked: flags 0, GSO none');
    t.like(data, { length: frames[i]!.length, write: false });
    t.deepEqual(tag.bytes(data!.address, frames[i]!.length), frames[i]!);
  });
  t.like(c.tx, { frames: 4, bytes: 60 + 1514 + 100 + 61 });
  t.throws(() => tx.post(4, 60), { message: /no such buffer/ });
  t.throws(() => tx.post(0, 2049), { message: /no such buffer or length/ });
  // The device completes out of order: the buffers come back in its order.
  device.complete(chains[2]![0], 0);
  device.complete(chains[0]![0], 0);
  t.is(tx.reclaim(), 2);
  t.deepEqual(back, [2, 0]);
  t.is(tx.inFlight, 2);
  device.complete(chains[3]![0], 0);
  t.is(tx.close(), 1, 'the chain the device never returned is lost; the one it returned at the stop is not');
});
