/**
 * The split virtqueue (drivers/virtio/split-ring.ts) against a device model
 * that reads the ring memory as a virtio device does: chains as the device
 * sees them, the 16-bit indices wrapping, descriptors reused whatever order
 * the device completes in, and a device that returns what is not in flight.
 */
import test from 'ava';
import { SplitRing } from '../../drivers/virtio/split-ring.js';
import { FakeVirtioDevice, type Buffer3 } from '../support/fake-virtio-device.js';

function ring(size: number) {
  const memory = new SharedArrayBuffer(SplitRing.bytes(size));
  const device = new FakeVirtioDevice(memory, size);
  const r = new SplitRing(size, memory, 0, 0x1_0000_0000, () => device.kicks++);
  device.usedAt = r.usedBus - r.descBus;
  return { r, device };
}

test('no used element straddles a 4 KiB page, whatever the size (QEMU 7.2 behind its IOMMU loses such a write); the used ring 4-aligned', (t) => {
  for (let size = 1; size <= 32768; size *= 2) {
    const r = new SplitRing(size, new SharedArrayBuffer(SplitRing.bytes(size)), 0, 0x1_0000_0000, () => {});
    const used = r.usedBus;
    t.is(used % 4, 0);
    t.true(used - r.availBus >= 6 + 2 * size, 'after the avail ring');
    const straddling = Array.from({ length: size }, (_, i) => used + 4 + 8 * i).filter((at) => Math.floor(at / 4096) !== Math.floor((at + 7) / 4096));
    t.deepEqual(straddling, [], `size ${size}`);
  }
});

test('a chain reaches the device as laid out: addresses above 4 GiB, lengths, NEXT links, device-writable buffers last; the rings where their bus addresses say', (t) => {
  const { r, device } = ring(8);
  t.is(r.descBus, 0x1_0000_0000);
  t.is(r.availBus, 0x1_0000_0000 + 16 * 8);
  t.is(r.usedBus % 4, 0);
  const head = r.add(3, [0x1_2345_6000, 0x2000, 0x3010], [16, 4096, 1], 2);
  t.true(head >= 0);
  t.is(r.free, 5);
  const [[seenHead, buffers]] = device.take() as [[number, Buffer3[]]];
  t.is(seenHead, head);
  t.deepEqual(buffers, [{ address: 0x1_2345_6000, length: 16, write: false }, { address: 0x2000, length: 4096, write: false }, { address: 0x3010, length: 1, write: true }]);
  r.kick();
  t.is(device.kicks, 1);
  device.setNoNotify(true);
  r.kick();
  t.is(device.kicks, 1, 'no doorbell while the device says it needs none');
});

test('a chain longer than the free descriptors is refused whole, taking nothing', (t) => {
  const { r, device } = ring(4);
  t.true(r.add(3, [1, 2, 3].map((x) => x * 16), [1, 1, 1], 3) >= 0);
  t.is(r.add(2, [16, 32], [1, 1], 2), -1);
  t.is(r.free, 1);
  t.is(device.take().length, 1);
});

test('the 16-bit avail and used indices wrap: 70,000 chains through a ring of 4, completed two at a time in reverse, each back once with its own head and length', (t) => {
  const { r, device } = ring(4);
  let completed = 0;
  const pending = new Map<number, number>();
  for (let i = 0; i < 70_000; i += 2) {
    for (const k of [i, i + 1]) {
      const head = r.add(2, [0x1000 * (k % 7 + 1), 0x9000], [512, 1], 1);
      t.not(head, -1);
      pending.set(head, k);
    }
    const chains = device.take();
    if (chains.length !== 2) return t.fail(`round ${i}: the device saw ${chains.length} chains`);
    for (const [head, buffers] of chains.reverse()) device.complete(head, buffers[0]!.address);
    r.reap((head, written) => {
      const k = pending.get(head);
      if (k === undefined || written !== 0x1000 * (k % 7 + 1)) t.fail(`head ${head} came back with ${written}, expected request ${k}`);
      pending.delete(head);
      completed++;
    });
  }
  t.is(completed, 70_000);
  t.is(r.free, 4);
  t.is(r.inFlight, 0);
});

test('descriptors are reused whatever the completion order: chains in flight never share one', (t) => {
  const { r, device } = ring(16);
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  const inFlight = new Map<number, number[]>();
  for (let round = 0; round < 2000; round++) {
    for (;;) {
      const count = 1 + Math.floor(random() * 3);
      const tagAddress = 0x10000 * (round + 1);
      const head = r.add(count, Array.from({ length: count }, (_, i) => tagAddress + i), Array(count).fill(8), count);
      if (head < 0) break;
      inFlight.set(head, Array.from({ length: count }, (_, i) => tagAddress + i));
    }
    const chains = device.take();
    // Every published chain carries exactly its own buffers: no descriptor was taken by two chains.
    for (const [head, buffers] of chains) t.deepEqual(buffers.map((b) => b.address), inFlight.get(head));
    const order = [...inFlight.keys()].sort(() => random() - 0.5);
    for (const head of order.slice(0, 1 + Math.floor(random() * order.length))) device.complete(head, 0);
    r.reap((head) => {
      if (!inFlight.delete(head)) t.fail(`head ${head} completed twice`);
    });
    if (r.free + [...inFlight.values()].reduce((n, b) => n + b.length, 0) !== 16) return t.fail(`round ${round}: descriptors lost or duplicated`);
  }
  t.pass();
});

test('a device that returns a descriptor heading no chain in flight, or a used index past what is in flight, is a fault', (t) => {
  const { r, device } = ring(8);
  const head = r.add(2, [0x1000, 0x2000], [16, 1], 1);
  device.take();
  device.complete((head + 1) % 8, 0);
  t.throws(() => r.reap(() => t.fail('nothing is done')), { message: /heads no chain in flight/ });
  const other = ring(8);
  other.r.add(1, [0x1000], [16], 1);
  other.device.forceUsedIdx(5);
  t.throws(() => other.r.reap(() => {}), { message: /ahead of the 1 chain/ });
});
