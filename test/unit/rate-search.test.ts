import test from 'ava';
import { defaultRateSearch, findLosslessRate, type ProbeResult } from '../../vm/net/rate-search.js';

/**
 * A path with a sender that goes at most `senderMax` frames per second and a
 * receiver that takes `capacity`, behind a ring of `ring` frames: a burst of
 * `burst` frames loses only once the backlog outgrows the ring.
 */
function path(senderMax: number, capacity: number, ring = 4096, burst = 5000) {
  const asked: number[] = [];
  const probe = async (rate: number): Promise<ProbeResult> => {
    asked.push(rate);
    const sent = Math.min(rate, senderMax);
    const received = Math.min(sent, capacity);
    const backlog = burst * (1 - received / sent);
    return { lossless: backlog <= ring, sent, received, detail: `backlog ${Math.round(backlog)}` };
  };
  return { probe, asked };
}

test('a receiver that takes 5,000 frames per second: found within one bisection step below it, never above', async (t) => {
  const p = path(100_000, 5000, 0);
  const r = await findLosslessRate(p.probe);
  t.log(p.asked.join(' '), '->', r.rate);
  t.is(r.limit, 'loss');
  t.true(r.rate <= 5000 && r.rate >= 4500, `${r.rate}`);
  t.true(p.asked.length <= 6, 'exponential then three bisections');
});

test('a burst the ring absorbs whole does not pass when the receiver falls behind', async (t) => {
  // Every probe is lossless (the ring holds a whole burst), yet only rates the receiver keeps pace with pass.
  const p = path(100_000, 3000, 1_000_000);
  const r = await findLosslessRate(p.probe);
  t.log(p.asked.join(' '), '->', r.rate);
  t.true(r.rate <= 3000 / defaultRateSearch.keepPace, `${r.rate}`);
  t.true(r.rate >= 2500, `${r.rate}`);
});

test('a sender slower than the receiver: its own rate is the answer', async (t) => {
  const p = path(6000, 1_000_000);
  const r = await findLosslessRate(p.probe);
  t.log(p.asked.join(' '), '->', r.rate);
  t.is(r.limit, 'sender');
  t.is(r.rate, 6000);
  t.is(r.best.result.sent, 6000);
});

test('a receiver slower than the first probe: the rate halves, then bisects', async (t) => {
  const p = path(100_000, 700, 0);
  const r = await findLosslessRate(p.probe);
  t.log(p.asked.join(' '), '->', r.rate);
  t.deepEqual(p.asked.slice(0, 3), [2000, 1000, 500]);
  t.true(r.rate <= 700 && r.rate >= 500, `${r.rate}`);
});

test('nothing passes: an error naming the lowest rate tried', async (t) => {
  const p = path(100_000, 100, 0);
  await t.throwsAsync(findLosslessRate(p.probe), { message: /even 250 frames per second failed \(backlog \d+\); nothing passes at or above 250/ });
});

test('the ceiling bounds the search', async (t) => {
  const p = path(1e9, 1e9);
  const r = await findLosslessRate(p.probe);
  t.is(r.limit, 'ceiling');
  t.is(r.rate, defaultRateSearch.ceiling);
});

test('the answer is what a passing probe\'s sender achieved, not what was asked of it', async (t) => {
  // A sender that stalls whenever it is asked for 6,000/s or more goes at half that; the receiver takes 7,000.
  const probe = async (rate: number): Promise<ProbeResult> => {
    const sent = rate >= 6000 ? rate / 2 : rate;
    return { lossless: rate < 7500, sent, received: sent, detail: '' };
  };
  const r = await findLosslessRate(probe);
  t.log(r.probes.map((p) => `${p.asked}:${p.result.sent}:${p.passed ? 'pass' : 'fail'}`).join(' '));
  t.is(r.rate, 4000);
  t.is(r.best.asked, 4000);
});
