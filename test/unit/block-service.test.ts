/**
 * The shared-memory ring (shm/ring.ts) and the block service over it
 * (services/block-service.ts): a BlockProxy in this thread against a fake
 * block device served from a real worker thread.
 */
import test from 'ava';
import { Worker } from 'node:worker_threads';
import { Subject } from 'rxjs';
import { BlockProxy, serveBlockDevice, type BlockServiceSetup } from '../../services/block-service.js';
import { BlockGoneError, type BlockCompletion, type BlockDevice, type BlockEnd, type RegisteredBuffer } from '../../drivers/block.js';
import { NvmeStatusError } from '../../drivers/nvme/errors.js';
import { UpciError } from '../../kernel/errors.js';
import { allocShared } from '../../shm/mapping.js';
import { createRing, RingConsumer, RingProducer, ringWakeUps, type RingWait } from '../../shm/ring.js';
import { blockUntil, progressing, until, within } from '../support/bounded.js';
import { countingPosts } from '../support/posts.js';
import { NO_WAKE_UPS, recoverable, wokenByNotify, type WakeUps } from '../support/wake-ups.js';

const fakeWorker = new URL('../support/fake-block-worker.js', import.meta.url);
const ringModule = new URL('../../shm/ring.js', import.meta.url).href;

function push(producer: RingProducer, ...values: number[]): boolean {
  const at = producer.reserve();
  if (at < 0) return false;
  values.forEach((v, i) => (producer.words[at + i] = v));
  producer.publish();
  return true;
}

function drained(consumer: RingConsumer): number[][] {
  const out: number[][] = [];
  consumer.drain((w, at) => {
    out.push(Array.from(w.subarray(at, at + consumer.slotWords)));
  });
  return out;
}

test('ring: entries come out in order across many wraparounds of a small ring', (t) => {
  const ring = createRing(4, 2);
  const producer = RingProducer.claim(ring);
  const consumer = RingConsumer.claim(ring);
  const seen: number[][] = [];
  let next = 0;
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 1 + (round % 4); i++, next++) t.true(push(producer, next, next ^ 0x5a5a));
    seen.push(...drained(consumer));
  }
  t.is(seen.length, next);
  t.true(next > 4 * 20, 'the slot index wrapped many times');
  t.deepEqual(seen, Array.from({ length: next }, (_, i) => [i, i ^ 0x5a5a]));
});

test('ring: a full ring refuses the next entry (backpressure) until the consumer drains', (t) => {
  const ring = createRing(8, 1);
  const producer = RingProducer.claim(ring);
  const consumer = RingConsumer.claim(ring);
  for (let i = 0; i < 8; i++) t.true(push(producer, i));
  t.is(producer.used, 8);
  t.is(producer.reserve(), -1, 'full: no slot');
  t.false(push(producer, 99));
  let first: number | undefined;
  // A handler that refuses leaves the slot (and the rest) in place.
  t.is(consumer.drain((w, at) => {
    if (first !== undefined) return false;
    first = w[at]!;
    return true;
  }), 1);
  t.is(first, 0);
  t.true(push(producer, 8), 'one slot drained: one more fits');
  t.deepEqual(drained(consumer).map((s) => s[0]), [1, 2, 3, 4, 5, 6, 7, 8]);
});

test('ring: single producer, single consumer: a second claim of either end is refused until released', (t) => {
  const ring = createRing(2, 1);
  const producer = RingProducer.claim(ring);
  t.throws(() => RingProducer.claim(ring), { instanceOf: UpciError, message: /already has a producer.*single-producer/s });
  const consumer = RingConsumer.claim(ring);
  t.throws(() => RingConsumer.claim(ring), { instanceOf: UpciError, message: /already has a consumer/ });
  producer.release();
  consumer.stop();
  t.notThrows(() => RingProducer.claim(ring));
  t.notThrows(() => RingConsumer.claim(ring));
  t.throws(() => createRing(3, 1), { message: /a ring of 3 slots/ });
});

test('ring: 8,192 tokens passed back and forth with a worker through two rings, 2,000,000 slots, never stall, each hand-off woken by a notify (not by the re-check)', async (t) => {
  const out = createRing(16384, 1);
  const back = createRing(16384, 1);
  const worker = new Worker(new URL('../support/ring-tokens-worker.js', import.meta.url), { workerData: { out: out, back, tokens: 8192 } });
  t.teardown(() => worker.terminate());
  const from = RingConsumer.claim(out);
  const to = RingProducer.claim(back);
  const SLOTS = 2_000_000;
  const before = ringWakeUps();
  const workerWakeUps = () => new Promise<WakeUps>((resolve) => {
    worker.once('message', resolve);
    worker.postMessage('wake-ups');
  });
  const workerBefore = await workerWakeUps();
  let slots = 0;
  let done!: (e?: Error) => void;
  const all = new Promise<void>((resolve, reject) => (done = (e) => (e ? reject(e) : resolve())));
  from.start((w, at) => {
    slots++;
    const slot = to.reserve();
    if (slot < 0) throw new Error('the back ring is full');
    to.words[slot] = w[at]!;
    to.publish();
    if (slots === SLOTS) done();
    // Without wake-ups the exchange still moves, a re-check period per hand-off: fail as soon as this side shows it.
    else if ((slots & 0xffff) === 0 && ringWakeUps().recovered - before.recovered > recoverable(slots)) {
      done(new Error(`${ringWakeUps().recovered - before.recovered} hand-offs in ${slots} slots came only from the re-check`));
    }
  });
  try {
    await progressing(2000, () => slots, `the exchange stalled (pending: ${from.used} out, ${to.used} back)`, () => all);
  } finally {
    from.stop();
  }
  wokenByNotify(t, 'this thread (out ring)', before, ringWakeUps(), slots);
  wokenByNotify(t, 'the worker (back ring)', workerBefore, await workerWakeUps(), slots);
});

// Serial: it counts this thread's wake-ups exactly, so no other test's ring may wake meanwhile.
test.serial('ring: a notify that never arrives (a wait that drops it, as V8 now and then does) is recovered by the re-check, with the period given, and counted', async (t) => {
  const ring = createRing(8, 1);
  const producer = RingProducer.claim(ring);
  // The first wait drops every notify and ends only when the test plays its re-check; the later ones are real.
  let recheck!: (how: 'timed-out') => void;
  const periods: number[] = [];
  const dropsFirst: RingWait = (array, index, value, timeout) => {
    periods.push(timeout);
    if (periods.length > 1) return Atomics.waitAsync(array, index, value, timeout);
    return { async: true, value: new Promise<'timed-out'>((resolve) => (recheck = resolve)) };
  };
  const consumer = RingConsumer.claim(ring, { recheckMs: 12_345, waitAsync: dropsFirst });
  t.teardown(() => consumer.stop());
  const got: number[] = [];
  consumer.start((w, at) => void got.push(w[at]!));
  t.deepEqual(periods, [12_345], 'the empty ring\'s consumer waits, with the re-check period it was given');
  const before = ringWakeUps();
  push(producer, 42);
  recheck('timed-out');
  await until('the re-check to drain the slot whose notify was dropped', () => got.length === 1, 5_000);
  t.deepEqual(ringWakeUps(), { notified: before.notified, recovered: before.recovered + 1 }, 'one hand-off recovered by the re-check');
  push(producer, 43);
  await until('the next slot, by a real wait', () => got.length === 2, 5_000);
  t.deepEqual(got, [42, 43]);
  t.deepEqual(ringWakeUps(), { notified: before.notified + 1, recovered: before.recovered + 1 }, 'the next hand-off woken by its notify');
});

test('ring: a consumer waiting in this thread\'s event loop is woken by a producer in a worker, no message is posted', async (t) => {
  const ring = createRing(16, 1);
  const consumer = RingConsumer.claim(ring);
  const got: number[] = [];
  let resolve!: () => void;
  const all = new Promise<void>((r) => (resolve = r));
  const N = 5000;
  consumer.start((w, at) => {
    got.push(w[at]!);
    if (got.length === N) resolve();
  });
  const worker = new Worker(
    `const { workerData } = await import('node:worker_threads');
     const { RingProducer } = await import(${JSON.stringify(ringModule)});
     const p = RingProducer.claim(workerData);
     for (let i = 0; i < ${N}; i++) {
       let at;
       while ((at = p.reserve()) < 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
       p.words[at] = i;
       p.publish();
     }`,
    { eval: true, workerData: ring },
  );
  let messages = 0;
  worker.on('message', () => messages++);
  try {
    await within(20_000, all, `the consumer got ${got.length} of ${N} entries`);
  } finally {
    consumer.stop();
    await worker.terminate();
  }
  t.deepEqual(got, Array.from({ length: N }, (_, i) => i), 'every entry, in order, through a ring 16 slots deep');
  t.is(messages, 0);
});

interface Fake {
  readonly worker: Worker;
  readonly proxy: BlockProxy;
  /** Messages the worker has posted so far (the setup among them), and what its device saw. */
  stats(): Promise<{ posted: number; sharedSeen: { reads: number; writes: number }; registrations: { registered: number; unregistered: number; requests: number }; wakeUps: WakeUps }>;
  /** Messages this thread has received from the worker. */
  received(): number;
}

async function fake(t: { teardown(fn: () => unknown): void }): Promise<Fake> {
  const worker = new Worker(fakeWorker);
  t.teardown(() => worker.terminate());
  let received = 0;
  const replies: ((m: unknown) => void)[] = [];
  const setup = await within(20_000, new Promise<BlockServiceSetup>((resolve, reject) => {
    worker.once('error', reject);
    worker.on('message', (m: { type: string; setup?: BlockServiceSetup }) => {
      received++;
      if (m.type === 'setup') resolve(m.setup!);
      else replies.shift()?.(m);
    });
  }), 'the fake block worker never sent its setup');
  const proxy = new BlockProxy(setup);
  t.teardown(() => proxy.close('test over'));
  return {
    worker,
    proxy,
    stats: () => within(10_000, new Promise((resolve) => {
      replies.push(resolve as (m: unknown) => void);
      worker.postMessage({ type: 'stats' });
    }), 'the fake block worker never answered'),
    received: () => received,
  };
}

test.serial('block proxy: data in a SharedArrayBuffer goes by reference (the driver side writes the caller\'s own bytes); 400 I/Os post one message, the registration', async (t) => {
  const { proxy, stats, received } = await fake(t);
  t.like(proxy, { name: 'fake0n1', blockSize: 512, blockCount: 4096, canDiscard: true, maxTransferBytes: 128 * 1024 });
  const shared = new Uint8Array(allocShared(64 * 1024));
  const receivedBefore = received();
  const before = ringWakeUps();
  const { posts } = await countingPosts(async () => {
    for (let i = 0; i < 200; i++) {
      const part = shared.subarray(4096 * (i % 16), 4096 * (i % 16 + 1));
      part.fill(i & 0xff);
      await proxy.write(i * 8, part);
      t.is(part[4095], 0xee, 'the fake\'s stamp is in the caller\'s own array: it had this memory, not a copy');
      part.fill(0);
      t.is(await proxy.read(i * 8, 8, part), part, 'read resolves with the caller\'s array');
      if (part[0] !== (i & 0xff) || part[4095] !== (i & 0xff)) t.fail(`read ${i} did not land in the caller's memory`);
    }
  });
  t.is(posts, 1, 'one message from this thread: the SharedArrayBuffer\'s registration');
  t.is(received() - receivedBefore, 0, 'no message from the driver side');
  const s = await stats();
  t.is(s.posted, 2, 'the worker posted its setup and this answer only');
  t.deepEqual(s.sharedSeen, { reads: 200, writes: 200 });
  t.is(proxy.posted, 400, 'one ring slot per request');
  // One at a time: each request and each completion is a wake-up of a waiting consumer.
  wokenByNotify(t, 'the driver side (requests)', NO_WAKE_UPS, s.wakeUps, 400);
  wokenByNotify(t, 'this thread (completions)', before, ringWakeUps(), 400);
});

/** Only registered memory type-checks here: anything else is refused at compile time (the @ts-expect-error below fails the build if it were accepted). */
function registeredOnly(buffer: RegisteredBuffer): Uint8Array {
  return buffer.bytes;
}

test.serial('block proxy: registered memory: 10,000 requests through RegisteredBuffer.read/write reach the driver side\'s own registration of it (registered once, with the bounce area), one ring slot each, no message, each ended on `ends` with its tag; the data lands in the caller\'s memory', async (t) => {
  const { proxy, stats, received } = await fake(t);
  // Memory in a RegisteredBuffer's shape that no register() made: the brand keeps it out (checked by the build).
  const lookalike = { bytes: new Uint8Array(8), read: () => true, write: () => true, ends: proxy.completions as never, unregister: () => {} };
  // @ts-expect-error never registered, whatever its shape
  t.is(registeredOnly(lookalike).length, 8);
  const before = await stats();
  const { result: buffer, posts: registering } = await countingPosts(() => Promise.resolve(proxy.allocBuffer(16 * 4096)));
  t.is(registering, 1, 'registering posts the memory once');
  t.is(buffer.bytes.length, 16 * 4096);
  const words = new Uint32Array(buffer.bytes.buffer);
  const receivedBefore = received();
  const posted = proxy.posted;
  const tags: number[] = [];
  let failures = 0;
  let differed = 0;
  const { posts } = await countingPosts(() => within(60_000, new Promise<void>((resolve) => {
    let started = 0;
    let ended = 0;
    // Request n < 5,000 writes pattern n at block 8n mod 4096 from its lane's slice; the rest read those blocks back, checked.
    const start = (lane: number) => {
      const n = started++;
      const write = n < 5_000;
      if (write) words.fill(n % 5_000, lane * 1024, lane * 1024 + 1024);
      else words.fill(0, lane * 1024, lane * 1024 + 1024);
      const lba = (n % 5_000) * 8 % 4096;
      const ok = write ? buffer.write(lba, 8, lane * 4096, lane) : buffer.read(lba, 8, lane * 4096, lane);
      if (!ok) t.fail(`no room for lane ${lane}`);
    };
    const expected = new Int32Array(16).fill(-1);
    buffer.ends.subscribe((end: BlockEnd) => {
      tags.push(end.tag);
      if (end.error !== undefined) failures++;
      const lane = end.tag;
      // A read of block 8k ends with what the last write of that block left (the fake stamps 0xee into each write's last byte).
      if (expected[lane] !== -1 && words[lane * 1024] !== expected[lane]) differed++;
      expected[lane] = -1;
      if (++ended === 10_000) return resolve();
      if (started < 10_000) {
        if (started >= 5_000) expected[lane] = lastWriterOf(((started % 5_000) * 8) % 4096);
        start(lane);
      }
    });
    // Which write last put its pattern at `lba`: the writes go round 512 slots of 8 blocks, so the last of n ≡ lba/8 (mod 512).
    const lastWriterOf = (lba: number) => {
      let n = lba / 8;
      while (n + 512 < 5_000) n += 512;
      return n;
    };
    for (let lane = 0; lane < 16; lane++) start(lane);
  }), 'the 10,000 registered requests did not all end'));
  const receivedDuring = received() - receivedBefore;
  const after = await stats();
  t.is(failures, 0);
  t.is(differed, 0, 'every read ended with what was written there');
  t.is(tags.length, 10_000);
  t.true(tags.every((tag) => tag >= 0 && tag < 16), 'each end carries the tag its request was given');
  t.is(proxy.posted - posted, 10_000, 'one ring slot per request');
  t.is(posts, 0, 'no message from this thread per request');
  t.is(receivedDuring, 0, 'no message from the driver side');
  t.is(after.registrations.registered - before.registrations.registered, 1, 'the driver side registered the memory once');
  t.is(after.registrations.requests - before.registrations.requests, 10_000, 'and every request went through that registration');
  t.is(before.registrations.registered, 1, 'before it: the bounce area only, at the export\'s start');
  // Refused here, before the ring: past the end, over one command, a misaligned offset, an unregistered buffer.
  t.throws(() => buffer.read(4095, 8, 0, 0), { message: /run past the end/ });
  t.throws(() => buffer.read(0, 8, 16 * 4096 - 100, 0), { message: /inside the 65536-byte registered memory/ });
  t.throws(() => buffer.read(0, 1, 2, 0), { message: /4-byte-aligned/ });
  buffer.unregister();
  t.throws(() => buffer.read(0, 1, 0, 0), { message: /no longer registered/ });
  t.is(proxy.posted - posted, 10_000, 'nothing refused reached the ring');
});

test.serial('block proxy: other buffers are copied through the bounce area, split over bounce slots; read() without a buffer returns a new array; completions are reported', async (t) => {
  const { proxy } = await fake(t);
  const seen: BlockCompletion[] = [];
  const sub = proxy.completions.subscribe((c) => seen.push(c));
  const data = new Uint8Array(300 * 1024);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
  const copy = data.slice();
  const posted = proxy.posted;
  await proxy.write(16, data);
  t.is(proxy.posted - posted, 3, '300 KiB in 128 KiB bounce slots: three ring slots');
  t.true(Buffer.from(data).equals(copy), 'the caller\'s array is untouched: the fake stamped the bounce copy');
  const back = await proxy.read(16, data.length / 512);
  t.false(back.buffer instanceof SharedArrayBuffer);
  t.true(Buffer.from(back).equals(copy), 'read back what was written');
  await proxy.flush();
  await proxy.discard(16, 8);
  t.deepEqual(Array.from((await proxy.read(16, 8)).subarray(0, 4)), [0, 0, 0, 0]);
  sub.unsubscribe();
  t.deepEqual(seen.map((c) => [c.op, c.lba, c.blocks, c.error]), [
    ['write', 16, 600, undefined], ['read', 16, 600, undefined], ['flush', 0, 0, undefined], ['discard', 16, 8, undefined], ['read', 16, 8, undefined],
  ]);
});

test.serial('block proxy: failures in the driver\'s thread arrive as the same classes with the same fields; bad requests are refused here, before the ring', async (t) => {
  const { proxy } = await fake(t);
  const status = await t.throwsAsync(proxy.read(666, 1), { instanceOf: NvmeStatusError });
  t.like(status, { name: 'NvmeStatusError', command: 'Read', sct: 2, sc: 0x81, dnr: true });
  t.regex(status!.message, /Unrecovered Read Error \(SCT 2, SC 0x81, do not retry\)/);
  t.regex(status!.stack!, /in the driver's thread/);
  const refusal = await t.throwsAsync(proxy.read(667, 1), { instanceOf: UpciError });
  t.like(refusal, { name: 'UpciError', code: 'OUT_OF_RANGE', fix: 'read another LBA' });
  t.is(refusal!.message, 'fake0n1: LBA 667 is refused by the fake\n  fix: read another LBA');
  const bug = await t.throwsAsync(proxy.read(668, 1));
  t.is(bug!.name, 'TypeError');
  t.is(bug!.message, 'the fake has a bug at LBA 668');

  const posted = proxy.posted;
  await t.throwsAsync(proxy.read(4095, 2), { code: 'OUT_OF_RANGE', message: /run past the end of the namespace/ } as never);
  await t.throwsAsync(proxy.write(0, new Uint8Array(700)), { message: /700 bytes are not a whole number of 512-byte blocks/ });
  await t.throwsAsync(proxy.read(0, 2, new Uint8Array(1000)), { message: /the buffer holds 1000 bytes; 2 blocks are 1024 bytes/ });
  await t.throwsAsync(proxy.read(1.5, 1), { message: /not a non-negative integer/ });
  t.is(proxy.refused, 4);
  t.is(proxy.posted, posted, 'nothing refused reached the ring');
  t.is((await proxy.read(0, 1)).length, 512, 'the device still serves');
});

test.serial('block proxy: when the host takes the device back, pending requests reject at once with BlockGoneError and new ones are refused', async (t) => {
  const { proxy, worker } = await fake(t);
  const shared = new Uint8Array(allocShared(4096));
  const pending: Promise<unknown>[] = [proxy.read(777, 1), proxy.write(777, shared), proxy.write(777, new Uint8Array(512))];
  for (const p of pending) p.catch(() => {});
  await proxy.read(0, 1);
  // The driver thread is gone (terminated, as after a hang): nothing will ever complete.
  await worker.terminate();
  proxy.close('the host took the device back');
  for (const p of pending) {
    await t.throwsAsync(within(5_000, p, 'a pending request was neither completed nor rejected'), { instanceOf: BlockGoneError, message: /fake0n1: the host took the device back/ });
  }
  await t.throwsAsync(proxy.read(0, 1), { instanceOf: BlockGoneError }, 'a request after the take-back');
});

test.serial('block proxy: a completion already in the ring when the host takes the device back is delivered, not failed', async (t) => {
  const { proxy, worker } = await fake(t);
  await proxy.read(0, 1);
  const done = proxy.read(1, 1);
  const pending = proxy.read(777, 1);
  pending.catch(() => {});
  // This thread's loop is held while the driver side completes LBA 1: its completion waits in the ring, undrained.
  blockUntil('the completion of LBA 1 in the ring', () => proxy.completionsWaiting === 1, 10_000);
  proxy.close('the host took the device back');
  await worker.terminate();
  t.is((await within(5_000, done, 'the completed read never settled')).length, 512, 'the device did it: it resolves');
  await t.throwsAsync(pending, { instanceOf: BlockGoneError });
});

test.serial('block proxy: more requests than tags wait their turn and all complete', async (t) => {
  const { proxy } = await fake(t);
  const shared = new Uint8Array(allocShared(300 * 512));
  const all = await within(20_000, Promise.all(Array.from({ length: 300 }, (_, i) => proxy.write(i, shared.subarray(i * 512, (i + 1) * 512)))), 'not every request completed');
  t.is(all.length, 300);
  t.is(proxy.posted, 300);
});

test.serial('block export: a request naming a buffer whose registration has not arrived waits for it, and the requests behind it too', async (t) => {
  const calls: { lba: number; shared: boolean; first: number | undefined }[] = [];
  const device: BlockDevice = {
    name: 'probe0', blockSize: 512, blockCount: 64, canDiscard: false, maxTransferBytes: 4096,
    completions: new Subject<BlockCompletion>().asObservable(),
    read: (lba, _blocks, into) => {
      calls.push({ lba, shared: into?.buffer instanceof SharedArrayBuffer, first: into?.[0] });
      return Promise.resolve(into!);
    },
    write: () => Promise.resolve(),
    flush: () => Promise.resolve(),
    discard: () => Promise.resolve(),
    // Nothing registers: every request goes through read(), where this test sees it.
    register: () => {
      throw new Error('the probe registers no memory');
    },
    allocBuffer: () => {
      throw new Error('the probe registers no memory');
    },
  };
  const served = serveBlockDevice(device);
  t.teardown(() => served.stop());
  // This test plays the proxy by hand: request slots as BlockProxy writes them (op, tag, LBA low/high, blocks, buffer id, offset, length).
  const requests = RingProducer.claim(served.setup.requests);
  const completions = RingConsumer.claim(served.setup.completions);
  const post = (tag: number, lba: number, buffer: number) => {
    const at = requests.reserve();
    requests.words.set([0, tag, lba, 0, 1, buffer, 0, 512], at);
    requests.publish();
  };
  const memory = new Uint8Array(new SharedArrayBuffer(4096)).fill(0x42);
  post(0, 3, 1000);
  post(1, 4, 1 /* the bounce area */);
  await new Promise((r) => setTimeout(r, 100));
  t.deepEqual(calls, [], 'nothing ran while buffer 1000 was unknown, not even the request behind it');
  served.setup.port.postMessage({ type: 'buffer', id: 1000, buffer: memory.buffer });
  const done: number[] = [];
  await within(5_000, (async () => {
    while (done.length < 2) {
      completions.drain((w, at) => {
        done.push(w[at]!);
      });
      await new Promise((r) => setTimeout(r, 10));
    }
  })(), 'the two requests never completed');
  t.deepEqual(calls, [{ lba: 3, shared: true, first: 0x42 }, { lba: 4, shared: true, first: 0 }], 'in order, the first in the registered memory');
  t.deepEqual(done, [0, 1]);
  served.setup.port.close();
});
