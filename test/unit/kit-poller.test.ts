/**
 * The poller (drivers/kit/poller.ts) on fakes: a vector that records its
 * masking and the bus's own timers (BusTimers). It switches a queue to
 * polling (vector masked, passes until idle, kick() starts them again) and
 * back to interrupts (passes stop, vector unmasked); a throwing pass stops
 * it and goes to the fault funnel once.
 */
import test from 'ava';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { Subject } from 'rxjs';
import type { DriverVector } from '../../drivers/contract.js';
import { Poller } from '../../drivers/kit/poller.js';
import { BusTimers } from '../../drivers/kit/timers.js';
import type { InterruptEvent } from '../../pci/intr.js';

function fakeVector() {
  const calls: string[] = [];
  const vector: DriverVector = { index: 0, events: new Subject<InterruptEvent>(), mask: () => void calls.push('mask'), unmask: () => void calls.push('unmask') };
  return { vector, calls };
}

/** A queue with `outstanding` commands; each pass completes one. */
function fakeQueue(outstanding = 0) {
  const queue = { outstanding, passes: 0 };
  const pass = () => {
    queue.passes++;
    if (queue.outstanding > 0) queue.outstanding--;
    return queue.outstanding > 0;
  };
  return { queue, pass };
}

/** Event-loop turns until passes stop (or `turns` run out). */
async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await nextTurn();
}

test('to polling and back: the vector masked while polling, passes until the queue is idle, none in interrupt mode, the vector unmasked back', async (t) => {
  const timers = new BusTimers(() => new Error('released'));
  const { vector, calls } = fakeVector();
  const { queue, pass } = fakeQueue();
  const faults: unknown[] = [];
  const poller = new Poller({ timers, pass, vector, fault: (e) => faults.push(e) });
  t.is(poller.mode, 'interrupts');
  queue.outstanding = 3;
  poller.kick();
  await turns(5);
  t.is(queue.passes, 0, 'no pass in interrupt mode: the interrupt reaps');
  poller.poll();
  t.is(poller.mode, 'polling');
  t.deepEqual(calls, ['mask']);
  await turns(10);
  t.is(queue.passes, 3, 'passes until nothing is outstanding, then idle');
  t.is(timers.pending, 0, 'idle: no pass scheduled');
  queue.outstanding = 2;
  poller.kick();
  await turns(10);
  t.is(queue.passes, 5, 'a kick polls again until idle');
  queue.outstanding = 100;
  poller.kick();
  await nextTurn();
  poller.interrupts();
  const passes = queue.passes;
  await turns(5);
  t.is(poller.mode, 'interrupts');
  t.is(queue.passes, passes, 'no pass after the switch back');
  t.deepEqual(calls, ['mask', 'unmask']);
  t.is(timers.pending, 0);
  t.deepEqual(faults, []);
});

test('a queue without a vector only polls: it starts polling and refuses the switch to interrupts', async (t) => {
  const timers = new BusTimers(() => new Error('released'));
  const { queue, pass } = fakeQueue(2);
  const poller = new Poller({ timers, pass, fault: () => {} });
  t.is(poller.mode, 'polling');
  poller.kick();
  await turns(5);
  t.is(queue.passes, 2);
  t.throws(() => poller.interrupts(), { message: /no interrupt vector/ });
});

test('starting in polling mode masks the vector at once (an NVMe queue while the driver attaches)', (t) => {
  const timers = new BusTimers(() => new Error('released'));
  const { vector, calls } = fakeVector();
  const poller = new Poller({ timers, pass: () => false, vector, mode: 'polling', fault: () => {} });
  t.is(poller.mode, 'polling');
  t.deepEqual(calls, ['mask']);
});

test('a pass that throws stops the poller and reaches the fault funnel once; the bus\'s release ends a poll that never idles', async (t) => {
  const timers = new BusTimers(() => new Error('released'));
  const faults: unknown[] = [];
  let passes = 0;
  const poller = new Poller({ timers, pass: () => { passes++; if (passes === 3) throw new Error('bad completion'); return true; }, fault: (e) => faults.push(e) });
  poller.kick();
  await turns(10);
  t.is(passes, 3);
  t.deepEqual(faults.map((e) => (e as Error).message), ['bad completion']);
  poller.kick();
  await turns(3);
  t.is(passes, 3, 'stopped: a kick after the fault runs nothing');
  let busy = 0;
  const endless = new Poller({ timers, pass: () => { busy++; return true; }, fault: () => {} });
  endless.kick();
  await turns(3);
  timers.release();
  const seen = busy;
  await turns(3);
  t.is(busy, seen, 'no pass after the bus took its timers back');
});
