import test from 'ava';
import { readdirSync } from 'node:fs';
import * as libc from '../../kernel/libc.js';
import { interruptHub } from '../../workers/interrupt-hub.js';

function signal(fd: number, n = 1): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  libc.writeAll(fd, b, 'eventfd write');
}

const openFds = () => readdirSync('/proc/self/fd').length;
const settle = () => new Promise((r) => setTimeout(r, 600));

function nextCount(register: (listener: (n: number) => void) => void): Promise<number> {
  return new Promise((resolve) => register(resolve));
}

test.serial('the worker delivers each eventfd to its own listener, with the kernel count', async (t) => {
  const a = libc.eventfd(libc.EFD_NONBLOCK);
  const b = libc.eventfd(libc.EFD_NONBLOCK);
  const seenA: number[] = [];
  const seenB: number[] = [];
  let resolveA!: () => void;
  const gotA = new Promise<void>((r) => (resolveA = r));
  let resolveB!: () => void;
  const gotB = new Promise<void>((r) => (resolveB = r));
  const ra = interruptHub.register(a, (n) => { seenA.push(n); resolveA(); });
  const rb = interruptHub.register(b, (n) => { seenB.push(n); resolveB(); });
  signal(a, 3);
  await gotA;
  signal(b, 1);
  await gotB;
  t.deepEqual(seenA, [3]);
  t.deepEqual(seenB, [1]);
  interruptHub.unregister(ra.session, ra.slot);
  interruptHub.unregister(rb.session, rb.slot);
});

test.serial('10,000 register/unregister cycles leak no file descriptors, and delivery still works after', async (t) => {
  // Compare with no worker running on either side: it stops 200 ms after its last slot goes.
  await settle();
  const before = openFds();
  for (let i = 0; i < 10_000; i++) {
    const fd = libc.eventfd(libc.EFD_NONBLOCK);
    const r = interruptHub.register(fd, () => {});
    interruptHub.unregister(r.session, r.slot);
  }
  const fd = libc.eventfd(libc.EFD_NONBLOCK);
  let reg!: ReturnType<typeof interruptHub.register>;
  const count = nextCount((listener) => (reg = interruptHub.register(fd, listener)));
  signal(fd, 2);
  t.is(await count, 2);
  interruptHub.unregister(reg.session, reg.slot);
  await settle();
  t.is(openFds(), before);
});
