/**
 * The packet service (services/packet-service.ts: packetService's serve and
 * proxy) and the consumer's port over it (services/net-port.ts): a NetPort in
 * this thread over proxies of a fake NIC served from a real worker thread
 * (test/support/fake-packet-worker.ts). The services' own part (who asks
 * whom for an export) is test/unit/services.test.ts's.
 */
import test from 'ava';
import { Worker } from 'node:worker_threads';
import { NetPort } from '../../services/net-port.js';
import { LocalPacketSource, packetService, type PacketProxy, type PacketServiceSetup, type PacketSource } from '../../services/packet-service.js';
import type { PacketBinding, RxFrame } from '../../drivers/packet.js';
import { UpciError } from '../../kernel/errors.js';
import { allocShared } from '../../shm/mapping.js';
import { startAllocationMeter } from '../../vm/benchmarks/allocation.js';
import { ringWakeUps } from '../../shm/ring.js';
import { blockUntil, until, untilAnswer, within } from '../support/bounded.js';
import { countingPosts } from '../support/posts.js';
import { NO_WAKE_UPS, wokenByNotify } from '../support/wake-ups.js';
import type { FakeNicCommand, FakeNicOptions, FakeNicReport } from '../support/fake-packet-worker.js';

const fakeWorker = new URL('../support/fake-packet-worker.js', import.meta.url);

interface Fake {
  readonly worker: Worker;
  readonly proxy: PacketProxy;
  command(m: FakeNicCommand): void;
  report(): Promise<FakeNicReport>;
}

async function startFake(t: { teardown(f: () => unknown): void }, options: FakeNicOptions): Promise<Fake> {
  const worker = new Worker(fakeWorker, { workerData: options });
  t.teardown(() => worker.terminate());
  const reports: ((r: FakeNicReport) => void)[] = [];
  const setup = await within(20_000, new Promise<PacketServiceSetup>((resolve) => {
    worker.on('message', (m: { type: 'setup'; setup: PacketServiceSetup } | FakeNicReport) => {
      if (m.type === 'setup') resolve(m.setup);
      else reports.shift()?.(m);
    });
  }), 'the fake NIC\'s setup');
  return {
    worker,
    proxy: packetService.proxy(setup) as PacketProxy,
    command: (m) => worker.postMessage(m),
    report: () => within(10_000, new Promise<FakeNicReport>((resolve) => {
      reports.push(resolve);
      worker.postMessage({ type: 'report' } satisfies FakeNicCommand);
    }), 'the fake NIC\'s report'),
  };
}

/** A fake NIC (startFake) and a NetPort over it, its link up. */
async function linkedPort(t: { teardown(f: () => unknown): void }, options: FakeNicOptions): Promise<{ fake: Fake; port: NetPort }> {
  const fake = await startFake(t, options);
  const { port, provide } = portOver('nic0');
  provide(fake.proxy);
  await until('link up', () => port.linkState.up, 10_000);
  return { fake, port };
}

/** A NetPort whose incarnations are the sources given to provide(), in order (what the services hand it). */
function portOver(name: string): { port: NetPort; provide(source: PacketSource): void } {
  const waiting: ((s: PacketSource) => void)[] = [];
  const ready: PacketSource[] = [];
  const port = new NetPort(name, () => new Promise<PacketSource>((resolve) => {
    const source = ready.shift();
    if (source !== undefined) resolve(source);
    else waiting.push(resolve);
  }));
  return {
    port,
    provide: (source) => {
      const wait = waiting.shift();
      if (wait !== undefined) wait(source);
      else ready.push(source);
    },
  };
}

const numberOf = (bytes: Uint8Array) => new Uint32Array(bytes.buffer, bytes.byteOffset, 1)[0]!;

/** A frame numbered `n` of `length` bytes (the number in bytes 0..3, then `n & 0xff` to the end). */
function frame(n: number, length: number): Uint8Array {
  const f = new Uint8Array(length).fill(n & 0xff);
  new DataView(f.buffer).setUint32(0, n, true);
  return f;
}

/** The fake's report once `done` holds of it, bounded. */
const reportWhen = (fake: Fake, what: string, done: (r: FakeNicReport) => boolean, ms = 10_000) =>
  untilAnswer(what, () => fake.report(), done, ms, 5);

// Serial: it counts every message this thread posts, so no other test may post meanwhile.
test.serial('receive: 5,000 frames arrive intact and in order as views of the driver\'s own buffers; released buffers go back; no message per frame', async (t) => {
  const { fake, port } = await linkedPort(t, { receiveBuffers: 64, transmitBuffers: 8, incarnation: 0 });
  const seen: number[] = [];
  let bad = 0;
  const memories = new Set<ArrayBufferLike>();
  const objects = new Set<RxFrame>();
  port.frames.subscribe((f) => {
    const n = numberOf(f.bytes);
    if (f.length !== 60 + (n % 64)) bad++;
    seen.push(n);
    memories.add(f.bytes.buffer);
    objects.add(f);
    // Written into the driver's memory, if this is a view of it (the fake checks at release).
    f.bytes[2047] = 0xab;
    f.release();
  });
  const before = ringWakeUps();
  fake.command({ type: 'receive', count: 5000, from: 0, drop: false });
  const { posts } = await countingPosts(() => until('5,000 frames', () => seen.length >= 5000, 30_000));
  const report = await fake.report();
  // 5,000 frames each way (received, returned): whatever the batching, no hand-off waited for the re-check.
  wokenByNotify(t, 'this thread (received ring)', before, ringWakeUps(), 5000);
  wokenByNotify(t, 'the driver\'s thread (returned ring)', NO_WAKE_UPS, report.wakeUps, 5000);
  t.log(JSON.stringify({ ...report, transmitted: report.transmitted.length }));
  t.deepEqual(seen, Array.from({ length: 5000 }, (_, i) => i), 'each frame once, in order');
  t.is(bad, 0, 'every length as sent');
  t.is(memories.size, 1, 'every frame a view of one shared memory');
  t.true(objects.size <= 64, `one RxFrame object per driver buffer, reused (${objects.size})`);
  t.is(report.released, 5000, 'every buffer came back to the driver');
  t.is(report.marked, 5000, 'the consumer\'s writes were in the driver\'s buffers: no copy');
  t.true(report.posted <= 5, `messages from the driver's thread: setup, link, one buffer registration, the report (${report.posted})`);
  t.is(posts, 0, 'messages from this thread while the 5,000 frames came and went back');
  t.like(port.stats().rx, { frames: 5000, noBuffer: 0, unconsumed: 0 });
});

test('receive: a consumer that never releases stalls the ring; the driver counts what it could not receive, nothing crashes; releasing resumes the flow', async (t) => {
  const fake = await startFake(t, { receiveBuffers: 64, transmitBuffers: 8, incarnation: 0 });
  const { port, provide } = portOver('nic0');
  provide(fake.proxy);
  const held: RxFrame[] = [];
  port.frames.subscribe((f) => held.push(f));
  fake.command({ type: 'receive', count: 200, from: 0, drop: true });
  await until('64 frames', () => held.length >= 64, 10_000);
  const report = await fake.report();
  t.is(report.delivered, 64, 'the driver had 64 buffers');
  t.is(held.length, 64);
  t.like(port.stats().rx, { frames: 64, noBuffer: 136 });
  for (const f of held.splice(0)) f.release();
  // The buffers go back through a ring, the next command through a message: let the buffers arrive first.
  await reportWhen(fake, 'the 64 buffers back in the driver', (r) => r.released >= 64);
  fake.command({ type: 'receive', count: 64, from: 200, drop: true });
  await until('64 more frames', () => held.length >= 64, 10_000);
  t.deepEqual(held.map((f) => numberOf(f.bytes)), Array.from({ length: 64 }, (_, i) => 200 + i));
  t.like(port.stats().rx, { frames: 128, noBuffer: 136 });
});

/** `f` as the wire carries it: padded to 60 bytes with zeros. */
const padded = (f: Uint8Array) => {
  const out = new Uint8Array(Math.max(60, f.length));
  out.set(f);
  return out;
};

test('transmit: send() takes what the free transmit buffers hold, writable() resolves once the device gave buffers back; frames whole, padded with zeros, in order, one doorbell per batch', async (t) => {
  const { fake, port } = await linkedPort(t, { receiveBuffers: 8, transmitBuffers: 8, incarnation: 0 });
  const frames = Array.from({ length: 20 }, (_, i) => frame(i, 14 + i * 70));
  let sent = port.send(frames);
  t.is(sent, 8, 'eight transmit buffers: eight frames taken');
  t.is(port.stats().tx.ringFull, 1);
  let woken = false;
  const writable = port.writable().then(() => (woken = true));
  await reportWhen(fake, 'the device to have 8 frames', (r) => r.flushes >= 1);
  t.false(woken, 'writable() waits while every buffer is in flight');
  t.is(port.send(frames, sent), 0);
  fake.command({ type: 'complete', count: 8 });
  await within(10_000, writable, 'writable() after the device gave the buffers back');
  // writable() may resolve before every buffer is back: then a batch takes fewer, and there is one batch more.
  let batches = 1;
  while (sent < frames.length) {
    const n = port.send(frames, sent);
    t.true(n > 0, 'writable() resolved: a buffer was free');
    batches++;
    sent += n;
    // The device has the batch once the driver's thread drained the request ring (its own wake-up, in no order with
    // this test's messages): a 'complete' sent before that finds nothing in flight, and writable() would wait forever.
    await reportWhen(fake, `the device to have batch ${batches}`, (r) => r.flushes >= batches);
    fake.command({ type: 'complete', count: 8 });
    if (sent < frames.length) await within(10_000, port.writable(), 'writable()');
  }
  const report = await reportWhen(fake, '20 frames transmitted', (r) => r.transmitted.length >= 20);
  // Whole frames: the fake leaves garbage in a buffer after use, so a short frame sent without zeroing its padding shows it.
  t.deepEqual(report.transmitted, frames.map(padded), 'each frame once, in order, whole, short ones padded to 60 with zeros');
  t.is(report.flushes, batches, 'one doorbell per send() batch');
});

test('transmit: a frame shorter than an Ethernet header is refused with an UpciError naming it; nothing of its batch is queued; a 14-byte frame goes', async (t) => {
  const { fake, port } = await linkedPort(t, { receiveBuffers: 8, transmitBuffers: 8, incarnation: 0 });
  for (const short of [0, 1, 13]) {
    const e = t.throws(() => port.send([frame(1, 60), new Uint8Array(short)]), { instanceOf: UpciError });
    t.is(e?.code, 'OUT_OF_RANGE');
    t.regex(e?.message ?? '', new RegExp(`frame 1 of the batch (is empty|is ${short} bytes), shorter than an Ethernet header \\(14 bytes\\)`));
  }
  t.is(fake.proxy.transmitFree, 8, 'no transmit buffer taken by a refused batch');
  t.is(port.send([frame(2, 14)]), 1);
  const report = await reportWhen(fake, 'the 14-byte frame at the device', (r) => r.flushes >= 1);
  t.is(report.flushes, 1, 'one doorbell: the refused batches reached nothing');
  t.deepEqual(report.transmitted, [], 'nothing completed yet');
  fake.command({ type: 'complete', count: 1 });
  const done = await reportWhen(fake, 'the 14-byte frame sent', (r) => r.transmitted.length >= 1);
  t.deepEqual(done.transmitted, [padded(frame(2, 14))], 'only the good frame, padded to 60');
});

test('transmit: writable() called after the buffers already came back resolves (a send() that fell short, an await, then writable())', async (t) => {
  const { fake, port } = await linkedPort(t, { receiveBuffers: 8, transmitBuffers: 4, incarnation: 0 });
  const frames = Array.from({ length: 6 }, (_, i) => frame(i, 60));
  t.is(port.send(frames), 4, 'four transmit buffers');
  await reportWhen(fake, 'the device to have the 4 frames', (r) => r.flushes >= 1);
  fake.command({ type: 'complete', count: 4 });
  // The caller is busy elsewhere while the buffers come back: their wake-up finds no waiter.
  await until('the 4 buffers back on this side', () => fake.proxy.transmitFree === 4, 10_000);
  await within(5_000, port.writable(), 'writable() with every transmit buffer free');
  t.is(port.send(frames, 4), 2);
});

test('take-back: what the rings held when the incarnation ended is counted lost; held frames go stale; the next incarnation re-binds the same port and the counters add up', async (t) => {
  const { port, provide } = portOver('nic0');
  const first = await startFake(t, { receiveBuffers: 16, transmitBuffers: 8, incarnation: 0 });
  provide(first.proxy);
  const got: RxFrame[] = [];
  const sub = port.frames.subscribe((f) => got.push(f));
  await until('link up', () => port.linkState.up, 10_000);
  first.command({ type: 'receive', count: 4, from: 0, drop: true });
  await until('4 frames', () => got.length >= 4, 10_000);
  const stale = got[0]!;
  // The driver delivers 5 more and stops while this thread is busy: the 5 stay in the ring; then 3 sends nobody takes.
  first.command({ type: 'receive', count: 5, from: 4, drop: true });
  first.command({ type: 'stop' });
  blockUntil('the 5 frames in the ring, and the driver stopped', () => first.proxy.inRings().rx === 5 && !first.proxy.driverServing, 10_000);
  t.is(port.send([frame(1, 60), frame(2, 60), frame(3, 60)]), 3);
  // What the services do when the host takes the device back: the consumer's proxy is closed.
  first.proxy.close('taken back');
  await first.worker.terminate();
  t.is(port.attached, undefined);
  let s = port.stats();
  t.like(s.rx, { frames: 9, lostInRestart: 5 });
  t.like(s.tx, { lostInRestart: 3, droppedNoDevice: 0 });
  t.notThrows(() => stale.release(), 'a stale frame\'s release does nothing');
  t.is(port.send([frame(4, 60)]), 1);
  t.is(port.stats().tx.droppedNoDevice, 1, 'a send between incarnations is counted, not queued');

  port.addUnicast([2, 0, 0, 0, 0, 0x2a]);
  const second = await startFake(t, { receiveBuffers: 16, transmitBuffers: 8, incarnation: 1 });
  provide(second.proxy);
  await until('the second incarnation', () => port.attached?.incarnation === 1, 10_000);
  await until('link up again', () => port.linkState.up, 10_000);
  for (const f of got.splice(0)) f.release();
  second.command({ type: 'receive', count: 6, from: 100, drop: true });
  await until('6 frames of the second incarnation', () => got.length >= 6, 10_000);
  sub.unsubscribe();
  t.deepEqual(got.map((f) => numberOf(f.bytes)), [100, 101, 102, 103, 104, 105]);
  s = port.stats();
  t.like(s.rx, { frames: 15, lostInRestart: 5 });
  t.like(s.tx, { lostInRestart: 3, droppedNoDevice: 1 });
  t.deepEqual((await second.report()).filters?.unicast, [[2, 0, 0, 0, 0, 0x2a]], 'the consumer\'s filters re-applied to the new incarnation');
});

test.serial('receive: the consumer\'s side allocates nothing per frame (heap bytes per frame over 3,800 frames of one wake-up, the least of four bursts after two to warm up)', async (t) => {
  const { fake, port } = await linkedPort(t, { receiveBuffers: 4096, transmitBuffers: 8, incarnation: 0 });
  const BURST = 4000;
  const WARM_UP = 2;
  let received = 0;
  let stop: (() => { bytes: number; collections: number }) | undefined;
  const measured: { bytes: number; collections: number }[] = [];
  port.frames.subscribe((f) => {
    const k = received++ % BURST;
    if (received > WARM_UP * BURST && k === 100) stop = startAllocationMeter();
    if (received > WARM_UP * BURST && k === 3900) measured.push(stop!());
    f.release();
  });
  // Frames of one burst, all in the ring before this thread looks: a wake-up's own cost (its Atomics.waitAsync) is spread thin.
  // The first burst meets each buffer for the first time (its RxFrame is made then), the second gets the path optimized.
  // V8's compiler works on its own thread and installs its code (heap objects) when it is done, in whichever burst that
  // falls: the least of four measured bursts is the path's own cost (the compiler's only ever adds to a window).
  for (let burst = 0; burst < WARM_UP + 4; burst++) {
    fake.command({ type: 'receive', count: BURST, from: burst * BURST, drop: true });
    blockUntil('the burst\'s 4,000 frames in the ring', () => fake.proxy.inRings().rx === BURST, 10_000);
    await until('4,000 frames', () => received >= BURST * (burst + 1), 30_000);
  }
  // What the meter allocates itself (its heap statistics objects), in a window with no frame.
  const empty = startAllocationMeter()();
  const perFrame = measured.map((m) => (m.bytes - empty.bytes) / 3800);
  const least = Math.min(...perFrame);
  t.log(`${perFrame.map((b) => b.toFixed(2)).join(', ')} B per frame (${empty.bytes} B in an empty window; ${measured.map((m) => m.collections).join(', ')} GCs)`);
  // Bound: what the window costs beyond the frames (the runner's own work, about 5 B per frame here); one object per frame is 100 B and more.
  t.true(perFrame.length === 4 && least < 8, `heap bytes per frame on the consumer's side: ${least.toFixed(2)}`);
});

test('in the driver\'s own thread the port binds the driver\'s object itself: frames by reference, one copy and one doorbell per send(), buffers back on completion, a second consumer refused, the close detaches', async (t) => {
  const rx = new Uint8Array(allocShared(4 * 2048));
  const tx = new Uint8Array(allocShared(4 * 2048));
  const posted: [number, number][] = [];
  let flushes = 0;
  const binding: PacketBinding = {
    info: { mac: '02:00:00:00:00:01', macSource: 'fake', phyId: '0000:0000', interrupt: 'poll', incarnation: 0, rxRing: 4, txRing: 4 },
    receiveBuffers: 4,
    transmitBuffers: { buffer: tx.buffer as SharedArrayBuffer, stride: 2048, entries: 4 },
    transmit: (index, length) => void posted.push([index, length]),
    flushTransmit: () => void flushes++,
    applyFilters: () => {},
    hardwareCounters: [],
    readStats: () => {},
  };
  const local = new LocalPacketSource('nic0', binding);
  t.teardown(() => local.close('test over'));
  const { port, provide } = portOver('nic0');
  provide(local);
  await until('attached', () => port.attached !== undefined, 5_000);
  t.throws(() => packetService.serve(local), { message: /already has a consumer/ }, 'one consumer per port');
  local.endpoint.setLink({ up: true, speedMbps: 1000, fullDuplex: true, phyLink: true, autonegComplete: true });
  let released = 0;
  const frame: RxFrame = { bytes: rx.subarray(2048, 4096), length: 77, release: () => void released++ };
  const seen: RxFrame[] = [];
  port.frames.subscribe((f) => {
    seen.push(f);
    f.release();
  });
  local.endpoint.deliver(frame);
  t.is(seen[0], frame, 'the driver\'s frame object itself');
  t.is(released, 1);
  t.is(port.send([frame.bytes.subarray(0, 20), frame.bytes.subarray(0, 100), frame.bytes.subarray(0, 100), frame.bytes.subarray(0, 100), frame.bytes.subarray(0, 100)]), 4, 'four transmit buffers');
  t.deepEqual(posted.map(([, length]) => length), [60, 100, 100, 100], 'short frames padded');
  t.is(flushes, 1, 'one doorbell for the batch');
  let woken = false;
  void port.writable().then(() => (woken = true));
  local.endpoint.transmitted(posted[0]![0]);
  await until('writable() after a buffer came back', () => woken, 5_000);
  t.is(port.send([frame.bytes.subarray(0, 60)], 0), 1);
  t.is(posted.at(-1)![0], posted[0]![0], 'the buffer that came back is used again');
  local.close('taken back');
  t.is(port.attached, undefined);
  t.is(port.send([frame.bytes.subarray(0, 60)]), 1);
  t.is(port.stats().tx.droppedNoDevice, 1);
});
