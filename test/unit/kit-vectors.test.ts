/**
 * serveInterrupts (drivers/kit/vectors.ts) on fake vectors: each event
 * reaches the handler with its vector's index and is acknowledged, a
 * handler's throw and a vector's error go to the fault funnel (the event
 * still acknowledged, the next one still handled), and nothing is handled
 * once unsubscribed.
 */
import test from 'ava';
import { Subject } from 'rxjs';
import type { DriverVector } from '../../drivers/contract.js';
import { serveInterrupts } from '../../drivers/kit/vectors.js';
import type { InterruptEvent } from '../../pci/intr.js';

function fakeVector(index: number) {
  const events = new Subject<InterruptEvent>();
  const vector: DriverVector = { index, events, mask: () => undefined, unmask: () => undefined };
  let acks = 0;
  const fire = () => events.next({ ack: () => void acks++ } as unknown as InterruptEvent);
  return { vector, events, fire, acks: () => acks };
}

test('each event is handled with its vector\'s index and acknowledged; a throw or a vector error is a fault, the event still acknowledged', (t) => {
  const a = fakeVector(0);
  const b = fakeVector(1);
  const handled: number[] = [];
  const faults: unknown[] = [];
  const unsubscribe = serveInterrupts([a.vector, b.vector], (v) => {
    handled.push(v);
    if (handled.length === 3) throw new Error('handler broke');
  }, (e) => faults.push(e));
  a.fire();
  b.fire();
  b.fire();
  a.fire();
  t.deepEqual(handled, [0, 1, 1, 0]);
  t.is(a.acks() + b.acks(), 4, 'every event acknowledged, the one whose handler threw too');
  t.deepEqual(faults.map((e) => (e as Error).message), ['handler broke']);
  b.events.error(new Error('vector failed'));
  t.is((faults[1] as Error).message, 'vector failed');
  unsubscribe();
  a.fire();
  t.deepEqual(handled, [0, 1, 1, 0], 'nothing handled once unsubscribed');
  t.is(a.acks(), 2);
});
