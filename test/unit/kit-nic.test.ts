/**
 * The kit's NIC pieces on fakes (drivers/kit/rx-buffers.ts, tx-buffers.ts,
 * vectors.ts, nic-port.ts): receive buffers handed out as their own frames
 * past a device header and given back once, a dry pool counted, nothing
 * after close; transmit buffers checked, synced, counted and flushed once
 * per batch; vector handlers called on their driver until stopped, a throw
 * or a vector's error to the fault funnel, acks where asked; a port's
 * fault injection on the first incarnation only, nothing sent once stopped.
 */
import test from 'ava';
import { Subject } from 'rxjs';
import type { DriverBus, DriverVector } from '../../drivers/contract.js';
import { NicPort, type PortTransmit } from '../../drivers/kit/nic-port.js';
import { RxBuffers } from '../../drivers/kit/rx-buffers.js';
import { TxBuffers } from '../../drivers/kit/tx-buffers.js';
import { VectorService } from '../../drivers/kit/vectors.js';
import { DRIVER_COUNTERS, type DriverCounters, type PacketEndpoint, type PortInfo, type RxFrame } from '../../drivers/packet.js';
import { DmaSync, type DmaTag } from '../../pci/bus-dma.js';
import type { InterruptEvent } from '../../pci/intr.js';
import { MemoryTag } from '../support/memory-tag.js';

function counters(): DriverCounters {
  const zero = (names: readonly string[]) => Object.fromEntries(names.map((n) => [n, 0]));
  return { rx: zero(DRIVER_COUNTERS.rx), tx: zero(DRIVER_COUNTERS.tx), vectors: zero(DRIVER_COUNTERS.vectors), hardware: {} } as unknown as DriverCounters;
}

test('receive buffers: frames past the header, synced and counted; a dry pool counted; a bad frame rejected back to the pool; released once; stale after close', (t) => {
  const tag = new MemoryTag();
  const recycled: number[] = [];
  const buffers = new RxBuffers(tag as unknown as DmaTag, 4, 64, 12, { recycle: (id) => void recycled.push(id) });
  const c = counters();
  buffers.start(c.rx);
  const posted: number[] = [];
  t.is(buffers.fill(3, (id) => posted.push(id)), 3);
  t.is(buffers.fill(5, (id) => posted.push(id)), 1, 'the pool ran dry after its fourth buffer');
  t.is(c.rx.noBuffer, 1);
  t.is(new Set(posted).size, 4);
  t.is(buffers.held(4), 0);
  const [a, b, third] = posted as [number, number, number];
  const bus = buffers.pool.busAddresses[a]!;
  tag.syncs.length = 0;
  const frame = buffers.frame(a, 20);
  t.deepEqual(tag.syncs, [[DmaSync.POSTREAD, bus + 12, 20]], 'only the frame is synced, past the header');
  t.is(frame.bytes.byteOffset, buffers.pool.offsetOf(a) + 12);
  t.is(frame.bytes.length, 52);
  t.like(frame, { length: 20 });
  t.like(c.rx, { frames: 1, bytes: 20, errors: 0 });
  buffers.reject(b);
  t.like(c.rx, { frames: 1, errors: 1 });
  t.is(buffers.held(2), 1, 'two still in the ring, one with the consumer, the rejected one free');
  frame.release();
  frame.release();
  t.deepEqual(recycled, [a], 'a frame goes back once');
  t.true(buffers.recycle(a));
  t.is(buffers.held(2), 0);
  const again = buffers.frame(third, 30);
  buffers.close();
  again.release();
  t.deepEqual(recycled, [a], 'a frame held at close is stale');
  t.false(buffers.recycle(third));
  t.is(buffers.fill(4, () => t.fail('nothing is posted after close')), 0);
});

test('transmit buffers: a post checked, synced for its length and counted; one flush per batch', (t) => {
  const tag = new MemoryTag();
  const buffers = new TxBuffers(tag as unknown as DmaTag, 3, 2048, 'nic');
  const c = counters();
  buffers.start(c.tx);
  t.like(buffers.transmitBuffers, { entries: 3, stride: 2048 });
  t.false(buffers.flush(), 'nothing posted yet');
  for (const [index, length] of [[-1, 60], [3, 60], [0, 0], [0, 2049]] as const) {
    t.throws(() => buffers.prepare(index, length), { message: `nic: transmit of buffer ${index}, ${length} bytes: no such buffer or length (3 buffers of 2048)` });
  }
  t.deepEqual(tag.syncs, [], 'nothing synced for a refused post');
  t.is(buffers.prepare(2, 60), buffers.pool.busAddresses[2]!);
  t.deepEqual(tag.syncs, [[DmaSync.PREWRITE, buffers.pool.busAddresses[2]!, 60]]);
  buffers.posted(60);
  buffers.prepare(1, 1514);
  buffers.posted(1514);
  t.like(c.tx, { frames: 2, bytes: 1574 });
  t.true(buffers.flush());
  t.false(buffers.flush(), 'one doorbell for the batch');
});

function fakeVector(index: number) {
  const events = new Subject<InterruptEvent>();
  const vector: DriverVector = { index, events, mask() {}, unmask() {} };
  const acks: boolean[] = [];
  const fire = () => events.next({ vector: index, count: 1, ack: (claimed = true) => void acks.push(claimed) });
  return { vector, events, acks, fire };
}

class FakeDriver {
  readonly calls: string[] = [];
  failing = false;
  onA(): void {
    this.calls.push('a');
    if (this.failing) throw new Error('handler a failed');
  }
  onB(e: InterruptEvent): void {
    this.calls.push('b');
    e.ack(false);
  }
}

test('vectors: each served by its handler on the driver; a throw and a vector\'s error go to the fault funnel; acked after the handler where asked; nothing after stop', (t) => {
  for (const ackAfter of [false, true]) {
    const driver = new FakeDriver();
    const faults: unknown[] = [];
    const service = new VectorService<FakeDriver>(driver, (e) => void faults.push(e), ackAfter);
    const [a, b] = [fakeVector(0), fakeVector(1)];
    service.serve([a.vector, b.vector], [driver.onA, driver.onB]);
    a.fire();
    b.fire();
    t.deepEqual(driver.calls, ['a', 'b']);
    t.deepEqual(a.acks, ackAfter ? [true] : [], 'the handler that does not ack is acked for only with ackAfter');
    t.deepEqual(b.acks, ackAfter ? [false, true] : [false]);
    driver.failing = true;
    a.fire();
    t.is((faults[0] as Error).message, 'handler a failed');
    t.deepEqual(a.acks, ackAfter ? [true, true] : [], 'acked after a throw too');
    const error = new Error('vector lost');
    b.events.error(error);
    t.is(faults[1], error);
    service.stop();
    a.fire();
    t.is(driver.calls.length, 3, 'no handler after stop');
    t.is(faults.length, 2);
  }
});

class FakeTransmit implements PortTransmit {
  readonly calls: string[] = [];
  readonly transmitBuffers = { buffer: new SharedArrayBuffer(8), stride: 4, entries: 2 };
  post(index: number, length: number): void {
    this.calls.push(`post ${index} ${length}`);
  }
  flush(): void {
    this.calls.push('flush');
  }
  reclaim(): number {
    this.calls.push('reclaim');
    return 0;
  }
}

class FakePort extends NicPort<FakeTransmit> {
  readonly info = {} as PortInfo;
  readonly hardwareCounters = [];
  start(failAfterRxFrames: number | undefined) {
    this.provide(failAfterRxFrames);
    return this.deliver;
  }
  stop(): void {
    this.stopped = true;
  }
  applyFilters(): void {}
  readStats(): void {}
}

function portBus(incarnation: number) {
  const delivered: RxFrame[] = [];
  const c = counters();
  const endpoint = { counters: c, deliver: (f: RxFrame) => void delivered.push(f) } as unknown as PacketEndpoint;
  const provided: unknown[] = [];
  const bus = { incarnation, providePacketPort: (binding: unknown) => (provided.push(binding), endpoint) } as unknown as DriverBus;
  return { bus, delivered, c, provided };
}

test('port: provided as itself; fault injection throws past failAfterRxFrames on the first incarnation only, the frame released; transmit goes to the ring until stopped', (t) => {
  for (const incarnation of [0, 1]) {
    const { bus, delivered, c, provided } = portBus(incarnation);
    const tx = new FakeTransmit();
    const port = new FakePort(bus, tx, 16);
    const deliver = port.start(2);
    t.deepEqual(provided, [port]);
    t.is(port.transmitBuffers, tx.transmitBuffers);
    t.is(port.receiveBuffers, 16);
    let released = 0;
    const frame = { bytes: new Uint8Array(1), length: 1, release: () => void released++ };
    for (let n = 1; n <= 3; n++) {
      c.rx.frames = n;
      if (incarnation === 0 && n === 3) t.throws(() => deliver(frame), { message: 'fault injection: failAfterRxFrames=2 reached' });
      else deliver(frame);
    }
    t.is(delivered.length, incarnation === 0 ? 2 : 3);
    t.is(released, incarnation === 0 ? 1 : 0);
    port.transmit(1, 60);
    port.flushTransmit();
    port.stop();
    port.transmit(0, 60);
    port.flushTransmit();
    t.deepEqual(tx.calls, ['post 1 60', 'flush', 'reclaim']);
  }
});
