/**
 * The watchdog's silence arithmetic (actors/silence-meter.ts), with the kernel's run-queue wait given:
 * a starved thread is not called hung for the time it could not run, and a spinning or blocked one is.
 */
import test from 'ava';
import { SilenceMeter } from '../../actors/silence-meter.js';

const HEARTBEAT = 100;

/** `checks` silent checks of `intervalMs` each, the thread's run-queue wait growing by `waitPerCheck` at each. */
function quietFor(meter: SilenceMeter, checks: number, intervalMs: number, waitPerCheck: number | undefined, waitFrom = 1_000): void {
  for (let i = 0; i < checks; i++) meter.quiet(intervalMs, waitPerCheck === undefined ? undefined : waitFrom + i * waitPerCheck);
}

test('a thread that spins or blocks (no run-queue wait) is silent for every interval it was not heard', (t) => {
  const meter = new SilenceMeter(HEARTBEAT);
  meter.beat(25, 10);
  quietFor(meter, 40, 25, 0);
  t.is(meter.silentMs, 10 + 40 * 25);
  t.is(meter.waitedMs, 0);
});

test('time the thread sat in the run queue is not silence: a thread runnable 80% of each interval counts 20%', (t) => {
  const meter = new SilenceMeter(HEARTBEAT);
  meter.beat(25, 0);
  quietFor(meter, 41, 25, 20);
  // The first silent check only reads the wait: there is no earlier reading to subtract.
  t.is(meter.silentMs, 25 + 40 * 5);
  t.is(meter.waitedMs, 40 * 20);
});

test('a wait larger than the interval (a reading that straddles checks) discounts at most the interval, never adds', (t) => {
  const meter = new SilenceMeter(HEARTBEAT);
  meter.beat(25, 0);
  meter.quiet(25, 1_000);
  meter.quiet(25, 1_500);
  t.is(meter.silentMs, 25, 'the second check counted nothing');
  t.is(meter.waitedMs, 25);
  meter.quiet(25, 1_400);
  t.is(meter.silentMs, 50, 'a wait that went backwards (another thread reusing the TID) discounts nothing');
});

test('a late check (the process itself not scheduled) counts at most one heartbeat period', (t) => {
  const meter = new SilenceMeter(HEARTBEAT);
  meter.beat(25, 0);
  meter.quiet(5_000, undefined);
  t.is(meter.silentMs, HEARTBEAT);
});

test('without the kernel\'s figure (no TID, no schedstat) silence counts in full', (t) => {
  const meter = new SilenceMeter(HEARTBEAT);
  meter.beat(25, 0);
  quietFor(meter, 10, 25, undefined);
  t.is(meter.silentMs, 250);
  t.is(meter.waitedMs, 0);
});

test('a beat starts the count again from its age, and forgets the wait', (t) => {
  const meter = new SilenceMeter(HEARTBEAT);
  meter.beat(25, 0);
  quietFor(meter, 10, 25, 20);
  meter.beat(25, 7);
  t.is(meter.silentMs, 7);
  t.is(meter.waitedMs, 0);
  meter.quiet(25, 9_999);
  t.is(meter.silentMs, 7 + 25, 'the first check after a beat has no earlier reading to subtract');
  meter.beat(30, undefined);
  t.is(meter.silentMs, 30, 'a beat of unknown age counts the interval it came in');
});
