/**
 * The interrupt watcher (kernel/interrupt-watcher.ts): interrupt fds polled
 * by the event loop of the thread that handles them, and pci/intr over it.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import * as libc from '../../kernel/libc.js';
import type { DeviceFile, IrqSource } from '../../kernel/port.js';
import { PciDevice } from '../../pci/device.js';
import { Interrupts, type InterruptEvent, type VectorStats } from '../../pci/intr.js';
import { FdLedger, installFdLedger, watchReadable, watchSource } from '../../kernel/interrupt-watcher.js';
import { within } from '../support/bounded.js';
import { acceptingDma, fakeDevice, openFake } from '../support/fake-device.js';

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

function nextCount(register: (listener: (vector: number, n: number) => void) => void): Promise<number> {
  return within(5000, new Promise((resolve) => register((_v, n) => resolve(n))), 'the interrupt never reached the listener');
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

test.serial('a promise job a listener queues runs before the next listener of the same poll pass (napi_make_callback)', async (t) => {
  // Both fds are readable before this thread's loop polls again, so one epoll pass returns
  // both and their callbacks run back to back. napi_make_callback drains promise jobs as each
  // callback returns; under napi_call_function both listeners would run before either job.
  const a = libc.eventfd(libc.EFD_NONBLOCK);
  const b = libc.eventfd(libc.EFD_NONBLOCK);
  const order: string[] = [];
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  const listener = (name: string) => () => {
    order.push(name);
    void Promise.resolve().then(() => {
      order.push(`${name}'s job`);
      if (order.length === 4) finish();
    });
  };
  const wa = watchSource(counter(a), listener('a'));
  const wb = watchSource(counter(b), listener('b'));
  signal(a);
  signal(b);
  await within(5000, finished, `both listeners and their jobs never ran (so far: ${order.join(', ')})`);
  wa.unwatch();
  wb.unwatch();
  const [first, , second] = order;
  t.not(first, second);
  t.deepEqual(order, [first, `${first}'s job`, second, `${second}'s job`]);
});

test.serial('each counter source reaches its own listener, with the kernel count', async (t) => {
  const a = libc.eventfd(libc.EFD_NONBLOCK);
  const b = libc.eventfd(libc.EFD_NONBLOCK);
  const seenA: number[] = [];
  const seenB: number[] = [];
  let resolveA!: () => void;
  const gotA = new Promise<void>((r) => (resolveA = r));
  let resolveB!: () => void;
  const gotB = new Promise<void>((r) => (resolveB = r));
  const wa = watchSource(counter(a), (_v, n) => { seenA.push(n); resolveA(); });
  const wb = watchSource(counter(b), (_v, n) => { seenB.push(n); resolveB(); });
  signal(a, 3);
  await within(5000, gotA, 'source a\'s interrupt never arrived');
  signal(b, 1);
  await within(5000, gotB, 'source b\'s interrupt never arrived');
  t.deepEqual(seenA, [3]);
  t.deepEqual(seenB, [1]);
  wa.unwatch();
  wb.unwatch();
  t.false(isOpen(a), 'unwatch() closes a hub-owned fd at once');
  t.false(isOpen(b));
});

test.serial('a records source: each record counts on its vector, out-of-range vectors are dropped, the device-owned fd stays open', async (t) => {
  const [r, w] = libc.pipe(libc.O_NONBLOCK);
  const c = collector((seen) => seen.get(0) === 2 && seen.get(2) === 5 && seen.get(1) === 1);
  const watch = watchSource({ fd: r, format: 'records', firstVector: 0, vectors: 3, owner: 'device' }, c.listener);
  records(w, [0, 2], [2, 5], [3, 100], [0xffffffff, 7]);
  records(w, [1, 1]);
  await within(5000, c.done, 'not every record was delivered');
  t.deepEqual([...c.seen].sort(), [[0, 2], [1, 1], [2, 5]]);
  watch.unwatch();
  t.true(isOpen(r), 'a device-owned fd is left to its device');
  libc.close(w);
  libc.close(r);
});

test.serial('10,000 watch/unwatch cycles leak no file descriptors, and delivery still works after', async (t) => {
  const before = openFds();
  const [r, w] = libc.pipe(libc.O_NONBLOCK);
  for (let i = 0; i < 10_000; i++) {
    const c = watchSource(counter(libc.eventfd(libc.EFD_NONBLOCK)), () => {});
    const d = watchSource({ fd: r, format: 'records', firstVector: 0, vectors: 4, owner: 'device' }, () => {});
    c.unwatch();
    d.unwatch();
  }
  t.true(isOpen(r));
  const fd = libc.eventfd(libc.EFD_NONBLOCK);
  let watch!: ReturnType<typeof watchSource>;
  const count = nextCount((listener) => (watch = watchSource(counter(fd), listener)));
  signal(fd, 2);
  t.is(await count, 2);
  watch.unwatch();
  libc.close(w);
  libc.close(r);
  t.is(openFds(), before);
});

test.serial('the fd ledger lists the hub-owned fds a thread watches, until it unwatches them', (t) => {
  const buffer = new SharedArrayBuffer(FdLedger.bytes(4));
  const ledger = new FdLedger(buffer, 0, 4);
  ledger.clear();
  installFdLedger(ledger);
  const a = libc.eventfd(libc.EFD_NONBLOCK);
  const b = libc.eventfd(libc.EFD_NONBLOCK);
  const wa = watchSource(counter(a), () => {});
  const wb = watchSource(counter(b), () => {});
  t.deepEqual([...ledger.fds].filter((fd) => fd >= 0).sort(), [a, b].sort());
  wa.unwatch();
  t.deepEqual([...ledger.fds].filter((fd) => fd >= 0), [b]);
  t.deepEqual(ledger.take(), [b]);
  t.deepEqual([...ledger.fds].filter((fd) => fd >= 0), [], 'take() empties it');
  wb.unwatch();
  installFdLedger(new FdLedger(new SharedArrayBuffer(FdLedger.bytes(1)), 0, 1));
});

test.serial('a worker thread is woken by its own loop; terminated while watching, it leaves its fds to the ledger and the process runs on', async (t) => {
  const buffer = new SharedArrayBuffer(FdLedger.bytes(4) + 8);
  const ledger = new FdLedger(buffer, 8, 4);
  ledger.clear();
  const fd = libc.eventfd(libc.EFD_NONBLOCK);
  const worker = new Worker(`
    const { workerData, parentPort, threadId } = require('node:worker_threads');
    import(workerData.module).then(({ FdLedger, installFdLedger, watchSource }) => {
      installFdLedger(new FdLedger(workerData.buffer, 8, 4));
      watchSource({ fd: workerData.fd, format: 'counter', firstVector: 0, vectors: 1, owner: 'hub' }, (_v, n) => {
        parentPort.postMessage({ thread: threadId, count: n });
        for (;;) {} // and now it hangs, still watching
      });
      parentPort.postMessage('watching');
    });`, { eval: true, workerData: { module: new URL('../../kernel/interrupt-watcher.js', import.meta.url).href, buffer, fd } });
  const messages: unknown[] = [];
  const got = (n: number) => new Promise<void>((resolve) => {
    const check = () => (messages.length >= n ? resolve() : worker.once('message', (m) => { messages.push(m); check(); }));
    check();
  });
  await got(1);
  t.deepEqual([...ledger.fds].filter((f) => f >= 0), [fd]);
  signal(fd, 5);
  await got(2);
  t.deepEqual(messages[1], { thread: worker.threadId, count: 5 });
  await worker.terminate();
  t.deepEqual(ledger.take(), [fd], 'the fd is still open and listed for whoever must close it');
  t.true(isOpen(fd));
  libc.close(fd);
});

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

test.serial('watchReadable (the TAP export\'s wake-up): called while the fd has data, again on the next turn for what was left unread, never after unwatch; the fd stays open', async (t) => {
  const [readEnd, writeEnd] = libc.pipe(libc.O_NONBLOCK);
  t.teardown(() => {
    libc.close(readEnd);
    libc.close(writeEnd);
  });
  const buf = Buffer.alloc(1);
  let calls = 0;
  let woken!: () => void;
  let wake = new Promise<void>((resolve) => (woken = resolve));
  // Reads one byte per call: the rest must wake it again.
  const watch = watchReadable(readEnd, () => {
    calls++;
    libc.readSome(readEnd, buf, 'pipe read');
    woken();
  });
  t.is(calls, 0, 'nothing to read, no call');
  libc.writeAll(writeEnd, Buffer.from('abc'), 'pipe write');
  for (let i = 1; i <= 3; i++) {
    await within(5000, wake, `wake-up ${i} for the pipe's byte ${i} never came`);
    wake = new Promise<void>((resolve) => (woken = resolve));
  }
  t.is(calls, 3, 'one call per byte left unread: level-triggered');
  watch.unwatch();
  libc.writeAll(writeEnd, Buffer.from('d'), 'pipe write');
  // A second watch of the same fd is called in the poll pass that would have called the first.
  await within(5000, new Promise<void>((resolve) => {
    const second = watchReadable(readEnd, () => {
      second.unwatch();
      resolve();
    });
  }), 'the second watch was never called');
  t.is(calls, 3, 'no call after unwatch');
  t.true(isOpen(readEnd), 'the fd is its owner\'s');
});

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
  t.true(isOpen(readEnd), 'the device fd is left to the device');
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
  t.false(isOpen(fd), 'a hub-owned source that was never watched is closed');
  device.close();
});

test.serial('process.exit() returns promptly with sources watched', (t) => {
  const script = `
    import * as libc from '${new URL('../../kernel/libc.js', import.meta.url).pathname}';
    import { watchSource } from '${new URL('../../kernel/interrupt-watcher.js', import.meta.url).pathname}';
    const fd = libc.eventfd(libc.EFD_NONBLOCK);
    watchSource({ fd, format: 'counter', firstVector: 0, vectors: 1, owner: 'hub' }, () => {});
    setTimeout(() => process.exit(7), 300);`;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000 });
  t.is(run.signal, null, 'not killed by the timeout');
  t.is(run.status, 7);
});
