import test from 'ava';
import { Fanout } from '../../pci/fanout.js';

test('each subscriber sees what is emitted while it is subscribed, in order', (t) => {
  const f = new Fanout<number>();
  const a: number[] = [];
  const b: number[] = [];
  t.false(f.observed);
  const sa = f.observable.subscribe((v) => a.push(v));
  f.emit(1);
  const sb = f.observable.subscribe((v) => b.push(v));
  t.true(f.observed);
  f.emit(2);
  sa.unsubscribe();
  f.emit(3);
  sb.unsubscribe();
  f.emit(4);
  t.false(f.observed);
  t.deepEqual(a, [1, 2]);
  t.deepEqual(b, [2, 3]);
});

test('a subscriber that unsubscribes itself during emit() does not make the next one miss the value', (t) => {
  const f = new Fanout<number>();
  const seen: string[] = [];
  const first = f.observable.subscribe((v) => {
    seen.push(`first ${v}`);
    first.unsubscribe();
  });
  f.observable.subscribe((v) => seen.push(`second ${v}`));
  f.emit(1);
  f.emit(2);
  t.deepEqual(seen, ['first 1', 'second 1', 'second 2']);
});

test('complete() completes every subscriber, and a later one at once', (t) => {
  const f = new Fanout<number>();
  let completed = 0;
  f.observable.subscribe({ complete: () => completed++ });
  f.observable.subscribe({ complete: () => completed++ });
  f.complete();
  t.is(completed, 2);
  t.false(f.observed);
  f.observable.subscribe({ complete: () => completed++ });
  t.is(completed, 3);
  f.emit(1);
});
