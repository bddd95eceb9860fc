/**
 * The driver kit's ring positions (drivers/kit/ring.ts) on a fake doorbell:
 * slots cycle and the doorbell gets the slot, the phase tag flips on each
 * pass when the ring wraps at twice its size (NVMe's CQ), and positions
 * wrapping at 2^16 over a ring of 4 (virtio's indices) keep their count
 * and their slots across the 16-bit wrap.
 */
import test from 'ava';
import { Ring } from '../../drivers/kit/ring.js';

test('wrap = size: push and shift go round the slots; count is what lies between; the doorbell gets the slot', (t) => {
  const writes: [number, number][] = [];
  const r = new Ring(4, 4, { space: { write4: (offset, value) => writes.push([offset, value]) }, offset: 0x2818 });
  const pushed: number[] = [];
  const shifted: number[] = [];
  for (let i = 0; i < 10; i++) {
    pushed.push(r.push());
    pushed.push(r.push());
    t.is(r.count, 2);
    r.ringTail();
    shifted.push(r.shift(), r.shift());
    t.is(r.count, 0);
  }
  t.deepEqual(pushed, Array.from({ length: 20 }, (_, i) => i % 4));
  t.deepEqual(shifted, pushed);
  t.deepEqual(writes, Array.from({ length: 10 }, (_, i) => [0x2818, (2 * i + 2) % 4]));
  r.push();
  r.push();
  r.push();
  t.is(r.count, 3, 'a full ring of size - 1 is not mistaken for an empty one');
});

test('wrap = 2 * size: the phase the head expects is 1 on the first pass, 0 on the second, 1 again after', (t) => {
  const r = new Ring(3, 6);
  const phases: number[] = [];
  const slots: number[] = [];
  for (let i = 0; i < 9; i++) {
    phases.push(r.phase);
    slots.push(r.headSlot);
    r.shift();
  }
  t.deepEqual(phases, [1, 1, 1, 0, 0, 0, 1, 1, 1]);
  t.deepEqual(slots, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
  r.reset();
  t.is(r.phase, 1);
  t.is(r.headSlot, 0);
});

test('wrap = 2^16 over a ring of 4: 70,000 entries through it, count and slots right across the 16-bit wrap, ahead() counts what the other side published', (t) => {
  const r = new Ring(4, 0x10000);
  let bad = 0;
  for (let i = 0; i < 70_000; i += 2) {
    const a = r.push();
    const b = r.push();
    if (a !== i % 4 || b !== (i + 1) % 4 || r.count !== 2 || r.tail !== (i + 2) % 0x10000) bad++;
    // The other side publishes its index (mod 2^16) past both.
    if (r.ahead((i + 2) & 0xffff) !== 2) bad++;
    if (r.shift() !== i % 4 || r.shift() !== (i + 1) % 4 || r.count !== 0) bad++;
  }
  t.is(bad, 0);
  t.is(r.head, 70_000 % 0x10000);
});

test('a wrap that is no multiple of the size is refused', (t) => {
  t.throws(() => new Ring(3, 4), { instanceOf: RangeError, message: /whole multiple of the size/ });
  t.throws(() => new Ring(0), { instanceOf: RangeError });
});
