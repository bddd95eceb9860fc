import test from 'ava';
import { acceptingDma, fakeDevice, openFake } from '../support/fake-device.js';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import * as libc from '../../kernel/libc.js';
import type { DeviceFile, IrqSource } from '../../kernel/port.js';
import { PciDevice } from '../../pci/device.js';
import { Interrupts, type InterruptEvent, type VectorStats } from '../../pci/intr.js';
import { board, createBoardBuffer, FORMAT_DRAIN, FORMAT_RECORDS } from '../../workers/interrupt-board.js';
import { eventQueue } from '../../workers/event-queue.js';
import { interruptHub } from '../../workers/interrupt-hub.js';
import { readSource } from '../../workers/interrupt-worker.js';
import { pipeWakeable } from '../../workers/wakeable.js';
import { until, within } from '../support/bounded.js';

function signal(fd: number, n = 1): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  libc.writeAll(fd, b, 'eventfd write');
}

/** What pciuser(4)'s read(2) returns: {u32 vector, u32 count} records, written in one go. */
function records(fd: number, ...pairs: [number, number][]): void {
  const b = Buffer.alloc(8 * pairs.length);
  pairs.forEach(([vector, count], i) => {
    b.writeUInt32LE(vector, 8 * i);
    b.writeUInt32LE(count, 8 * i + 4);
  });
  libc.writeAll(fd, b, 'records write');
}

const counter = (fd: number): IrqSource => ({ fd, format: 'counter', firstVector: 0, vectors: 1, owner: 'hub' });
const isOpen = (fd: number) => existsSync(`/proc/self/fd/${fd}`);
const openFds = () => readdirSync('/proc/self/fd').length;
const settle = () => new Promise((r) => setTimeout(r, 600));

function nextCount(register: (listener: (vector: number, n: number) => void) => void): Promise<number> {
  return within(5000, new Promise((resolve) => register((_v, n) => resolve(n))), 'the interrupt never reached the listener');
}

/** Holds the main thread, as a busy driver would: the worker can count interrupts, but no drain can deliver them. */
function holdMainThread(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Collects (vector, count) pairs until `until` says enough. */
function collector(until: (seen: Map<number, number>) => boolean): { seen: Map<number, number>; done: Promise<void>; listener: (v: number, n: number) => void } {
  const seen = new Map<number, number>();
  let resolve!: () => void;
  const done = new Promise<void>((r) => (resolve = r));
  return {
    seen,
    done,
    listener: (v, n) => {
      seen.set(v, (seen.get(v) ?? 0) + n);
      if (until(seen)) resolve();
    },
  };
}

test.serial('the worker delivers each counter source to its own listener, with the kernel count', async (t) => {
  const a = libc.eventfd(libc.EFD_NONBLOCK);
  const b = libc.eventfd(libc.EFD_NONBLOCK);
  const seenA: number[] = [];
  const seenB: number[] = [];
  let resolveA!: () => void;
  const gotA = new Promise<void>((r) => (resolveA = r));
  let resolveB!: () => void;
  const gotB = new Promise<void>((r) => (resolveB = r));
  const ra = interruptHub.register(counter(a), (_v, n) => { seenA.push(n); resolveA(); });
  const rb = interruptHub.register(counter(b), (_v, n) => { seenB.push(n); resolveB(); });
  signal(a, 3);
  await within(5000, gotA, 'source a\'s interrupt never arrived');
  signal(b, 1);
  await within(5000, gotB, 'source b\'s interrupt never arrived');
  t.deepEqual(seenA, [3]);
  t.deepEqual(seenB, [1]);
  interruptHub.unregister(ra.session, ra.slot);
  interruptHub.unregister(rb.session, rb.slot);
});

test.serial('a removed hub-owned fd is closed once the worker lets go of it, with no interrupt after it', async (t) => {
  // Another source keeps the session (and its worker) running, so only reclaim can close the fd;
  // its interrupts also mark how far the worker has got.
  const keep = libc.eventfd(libc.EFD_NONBLOCK);
  const keepSeen: number[] = [];
  const rk = interruptHub.register(counter(keep), (_v, n) => keepSeen.push(n));
  const e = libc.eventfd(libc.EFD_NONBLOCK);
  const seen: number[] = [];
  const re = interruptHub.register(counter(e), (_v, n) => seen.push(n));
  signal(e, 1);
  await until('the interrupt before the removal', () => seen.length === 1, 5000);
  // Counted by the worker but not yet delivered when the source goes (the main thread is held,
  // so no drain runs in between), then one more after the removal, while the fd is still open.
  signal(e, 2);
  holdMainThread(200);
  interruptHub.unregister(re.session, re.slot);
  t.true(isOpen(e), 'still open right after unregister: the worker may be using it');
  signal(e, 4);
  // The marker: once it is delivered, every drain that could carry e's counts has run.
  signal(keep, 1);
  await until('the marker interrupt on the other source', () => keepSeen.length === 1, 5000);
  // The event loop must turn for the drain that follows the worker's batch; give a loaded machine time.
  await until('the removed fd to be closed', () => !isOpen(e), 5000);
  t.deepEqual(seen, [1], 'no interrupt reached the listener after unregister()');
  interruptHub.unregister(rk.session, rk.slot);
});

test.serial('a records source: each record counts on its vector, out-of-range vectors are dropped, the device-owned fd stays open', async (t) => {
  const [r, w] = libc.pipe(libc.O_NONBLOCK);
  const c = collector((seen) => seen.get(0) === 2 && seen.get(2) === 5 && seen.get(1) === 1);
  const reg = interruptHub.register({ fd: r, format: 'records', firstVector: 0, vectors: 3, owner: 'device' }, c.listener);
  // A neighbouring counter source: a record for a vector beyond the records source must never land in its slot.
  const e = libc.eventfd(libc.EFD_NONBLOCK);
  const neighbour: number[] = [];
  const rn = interruptHub.register(counter(e), (_v, n) => neighbour.push(n));
  records(w, [0, 2], [2, 5], [3, 100], [0xffffffff, 7]);
  records(w, [1, 1]);
  await within(5000, c.done, 'not every record was delivered');
  t.deepEqual([...c.seen].sort(), [[0, 2], [1, 1], [2, 5]]);
  t.deepEqual(neighbour, []);
  interruptHub.unregister(reg.session, reg.slot);
  // unregister() of a device-owned source returns once the worker let go of it; the hub never closes it.
  t.true(isOpen(r));
  interruptHub.unregister(rn.session, rn.slot);
  libc.close(w);
  libc.close(r);
});

test.serial('worker decoding: records are read until EAGAIN (more than one read), the wake-up pipe is drained', (t) => {
  const b = board(createBoardBuffer());
  const queue = eventQueue(-1); // only its read(); no queue is needed
  const buf = Buffer.alloc(64); // 8 records per read
  const [r, w] = libc.pipe(libc.O_NONBLOCK);
  const base = 10;
  Atomics.store(b.formats, base, FORMAT_RECORDS);
  Atomics.store(b.firsts, base, 4);
  Atomics.store(b.spans, base, 2);
  const many: [number, number][] = [];
  for (let i = 0; i < 20; i++) many.push([4 + (i % 2), 1]);
  many.push([3, 9], [6, 9]); // below firstVector, beyond the span
  records(w, ...many);
  readSource(queue, b, base, r, buf);
  t.is(b.counts[base], 10);
  t.is(b.counts[base + 1], 10);
  t.is(b.counts[base - 1], 0);
  t.is(b.counts[base + 2], 0);
  t.is(libc.readSome(r, buf, 'empty pipe'), -1, 'everything was read');
  libc.close(w);
  libc.close(r);

  // The NetBSD wake-up (a pipe), exercised on Linux's pipe2.
  const wake = pipeWakeable(libc);
  Atomics.store(b.formats, 0, FORMAT_DRAIN);
  for (let i = 0; i < 100; i++) wake.wake();
  readSource(queue, b, 0, wake.fd, buf);
  t.is(libc.readSome(wake.fd, buf, 'drained pipe'), -1);
  t.is(b.counts[0], 0);
  wake.close();
});

test.serial('10,000 register/unregister cycles leak no file descriptors, and delivery still works after', async (t) => {
  // Compare with no worker running on either side: it stops 200 ms after its last slot goes.
  await settle();
  const before = openFds();
  const [r, w] = libc.pipe(libc.O_NONBLOCK);
  for (let i = 0; i < 10_000; i++) {
    const fd = libc.eventfd(libc.EFD_NONBLOCK);
    const c = interruptHub.register(counter(fd), () => {});
    // A device-owned records source of 4 vectors, registered and unregistered alongside.
    const d = interruptHub.register({ fd: r, format: 'records', firstVector: 0, vectors: 4, owner: 'device' }, () => {});
    interruptHub.unregister(c.session, c.slot);
    interruptHub.unregister(d.session, d.slot);
  }
  t.true(isOpen(r));
  const fd = libc.eventfd(libc.EFD_NONBLOCK);
  let reg!: ReturnType<typeof interruptHub.register>;
  const count = nextCount((listener) => (reg = interruptHub.register(counter(fd), listener)));
  signal(fd, 2);
  t.is(await count, 2);
  interruptHub.unregister(reg.session, reg.slot);
  libc.close(w);
  libc.close(r);
  await settle();
  t.is(openFds(), before);
});

/** A kernel port whose device reports MSI as pciuser(4) does: one 'records' source, the device's own fd. */
function recordsDevice(): { device: PciDevice; writeEnd: number; readEnd: number; calls: string[] } {
  const [readEnd, writeEnd] = libc.pipe(libc.O_NONBLOCK);
  const calls: string[] = [];
  const fake = fakeDevice('0000:00:05.0', { intx: 0, msi: 4 }, {
    dma: acceptingDma(),
    enableIrqs: (kind, count) => {
      calls.push(`enable ${kind} ${count}`);
      return [{ fd: readEnd, format: 'records', firstVector: 0, vectors: count, owner: 'device' }];
    },
    disableIrqs: (kind) => void calls.push(`disable ${kind}`),
    close: () => {
      calls.push('close');
      libc.close(writeEnd);
      libc.close(readEnd);
    },
  });
  return { device: openFake(fake), writeEnd, readEnd, calls };
}

test.serial('pci/intr over a records port: one fd feeds every vector\'s stream; release leaves the fd to the device, close closes it', async (t) => {
  const { device, writeEnd, readEnd, calls } = recordsDevice();
  const irq = Interrupts.establish(device, { type: 'msi', vectors: 3 });
  t.deepEqual(calls, ['enable msi 3']);
  const got: InterruptEvent[] = [];
  let resolve!: () => void;
  const all = new Promise<void>((r) => (resolve = r));
  const statsOf2: VectorStats[] = [];
  let statsCompleted = false;
  irq.vector(2).stats$.subscribe({ next: (s) => statsOf2.push(s), complete: () => (statsCompleted = true) });
  const subs = irq.vectors.map((v) => v.events.subscribe((e) => {
    got.push(e);
    e.ack(e.vector !== 2); // vector 2's interrupt was not the device's: spurious
    if (got.length === 3) resolve();
  }));
  records(writeEnd, [2, 4], [0, 1]);
  records(writeEnd, [1, 2]);
  await within(5000, all, 'not every vector\'s interrupt arrived');
  t.deepEqual(got.map((e) => [e.vector, e.count]).sort(), [[0, 1], [1, 2], [2, 4]]);
  t.is(irq.vector(2).stats().coalesced, 3);
  // The counts at subscription, after the interrupt, after the ack that called it spurious.
  t.deepEqual(statsOf2, [
    { delivered: 0, coalesced: 0, spurious: 0, awaitingAck: false },
    { delivered: 1, coalesced: 3, spurious: 0, awaitingAck: false },
    { delivered: 1, coalesced: 3, spurious: 1, awaitingAck: false },
  ]);
  for (const s of subs) s.unsubscribe();
  t.false(irq.isReleased, 'vectors live until release(), not until the last unsubscribe');
  irq.release();
  t.true(irq.isReleased);
  t.true(statsCompleted, 'stats$ completes when the vector is disestablished');
  t.deepEqual(calls, ['enable msi 3', 'disable msi']);
  t.true(isOpen(readEnd), 'the hub did not close the device fd');
  // Establish again on the same fd, then let close() release it.
  const again = Interrupts.establish(device, { type: 'msi', vectors: 1 });
  const first = new Promise<InterruptEvent>((r) => again.vector(0).events.subscribe(r));
  records(writeEnd, [0, 1]);
  t.is((await within(5000, first, 'the re-established vector\'s interrupt never arrived')).count, 1);
  device.close();
  t.deepEqual(calls.slice(2), ['enable msi 1', 'disable msi', 'close']);
  t.false(isOpen(readEnd));
});

test.serial('pci/intr refuses sources that do not cover the vectors, and disables what it enabled', (t) => {
  const { device, calls } = recordsDevice();
  const file = device.kernel as { enableIrqs: DeviceFile['enableIrqs'] };
  const fd = libc.eventfd(libc.EFD_NONBLOCK);
  file.enableIrqs = (kind, count) => {
    calls.push(`enable ${kind} ${count}`);
    return [counter(fd)]; // vector 0 only
  };
  t.throws(() => Interrupts.establish(device, { type: 'msi', vectors: 2 }), { code: 'KERNEL', message: /no interrupt source for msi vector 1/ } as never);
  t.deepEqual(calls, ['enable msi 2', 'disable msi']);
  t.false(isOpen(fd), 'a hub-owned source that was never registered is closed');
  device.close();
});

/** How long process.exit() may take here: a worker left blocked in epoll_wait would hold it forever. */
const EXIT_BOUND_MS = 3000;

test.serial(`process.exit() completes within ${EXIT_BOUND_MS} ms while the interrupt worker is waiting in the kernel`, async (t) => {
  const script = `
    import * as libc from '${new URL('../../kernel/libc.js', import.meta.url).pathname}';
    import { interruptHub } from '${new URL('../../workers/interrupt-hub.js', import.meta.url).pathname}';
    const fd = libc.eventfd(libc.EFD_NONBLOCK);
    interruptHub.register({ fd, format: 'counter', firstVector: 0, vectors: 1, owner: 'hub' }, () => {});
    setTimeout(() => { console.log('exiting'); process.exit(7); }, 300);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let exitCalledAt: number | undefined;
  child.stdout.setEncoding('utf8').on('data', (text: string) => {
    if (text.includes('exiting')) exitCalledAt ??= performance.now();
  });
  const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal, at: performance.now() })));
  try {
    const { code, signal, at } = await within(20_000, ended, 'the child never exited');
    t.is(signal, null);
    t.is(code, 7);
    t.not(exitCalledAt, undefined, 'the child reached process.exit()');
    const ms = at - exitCalledAt!;
    t.log(`exit took ${ms.toFixed(0)} ms after process.exit()`);
    t.true(ms < EXIT_BOUND_MS, `exited ${ms.toFixed(0)} ms after process.exit()`);
  } finally {
    child.kill('SIGKILL');
  }
});
