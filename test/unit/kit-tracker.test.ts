/**
 * The driver kit's request trackers (drivers/kit/tracker.ts): taken and
 * given back in any order, never one ID out twice; a given-back ID taken
 * again by its ID (NVMe's resubmission); a tracker given back twice refused.
 */
import test from 'ava';
import { Trackers } from '../../drivers/kit/tracker.js';

/** xorshift32: the same order every run. */
function prng(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

test('taken and given back in any order, with takeId between: every ID out at most once, and all of them available again', (t) => {
  const trackers = new Trackers(31);
  const random = prng(0x9e3779b9);
  const out = new Set<number>();
  let duplicates = 0;
  for (let step = 0; step < 50_000; step++) {
    const r = random();
    if (r < 0.5) {
      const id = trackers.take();
      if (id < 0) {
        t.is(out.size, 31);
        continue;
      }
      if (out.has(id)) duplicates++;
      out.add(id);
    } else if (r < 0.6) {
      const id = Math.floor(random() * 31);
      const took = trackers.takeId(id);
      t.is(took, !out.has(id));
      out.add(id);
    } else if (out.size > 0) {
      // Any of those out, not the last taken.
      const ids = [...out];
      const id = ids[Math.floor(random() * ids.length)]!;
      out.delete(id);
      trackers.give(id);
    }
    if (trackers.outstanding !== out.size) duplicates++;
  }
  t.is(duplicates, 0);
  for (const id of out) trackers.give(id);
  const all = Array.from({ length: 31 }, () => trackers.take()).sort((a, b) => a - b);
  t.deepEqual(all, Array.from({ length: 31 }, (_, i) => i));
  t.is(trackers.take(), -1);
});

test('NVMe\'s resubmission: a command\'s ID given back at completion is taken again by that ID while others are out', (t) => {
  const trackers = new Trackers(4);
  const a = trackers.take();
  const b = trackers.take();
  trackers.give(a);
  const c = trackers.take();
  trackers.give(c);
  t.true(trackers.takeId(a));
  t.false(trackers.takeId(b), 'b is out');
  t.deepEqual(trackers.takenIds(), [a, b].sort((x, y) => x - y));
  const rest = [trackers.take(), trackers.take()];
  t.false(rest.includes(a) || rest.includes(b));
  t.is(trackers.take(), -1);
});

test('a tracker given back twice, or one never taken, is refused', (t) => {
  const trackers = new Trackers(2);
  const id = trackers.take();
  trackers.give(id);
  t.throws(() => trackers.give(id), { instanceOf: RangeError, message: /given back twice/ });
  t.throws(() => trackers.give(7), { instanceOf: RangeError });
  t.is(trackers.available, 2);
});
