/**
 * The one random-read load generator (vm/benchmarks/random-reads.ts), on a fake
 * block device that ends each read a turn later: how many reads it keeps in
 * flight, where it reads, what it counts, and that it stops.
 */
import test from 'ava';
import { RandomReads } from '../../vm/benchmarks/random-reads.js';

/** 1000 blocks of 512 bytes; every 7th read fails; `refuseAfter` reads, it refuses to start any more. */
function fakeDevice(refuseAfter = Infinity) {
  const device = { blockSize: 512, blockCount: 1000 };
  const seen = { started: 0, failed: 0, inFlight: 0, maxInFlight: 0, lanesBusy: new Set<number>(), badLba: [] as number[], laneTwice: 0, ended: 0 };
  const start = (load: RandomReads) => (lane: number, lba: number, blocks: number): boolean => {
    if (seen.started >= refuseAfter) return false;
    seen.started++;
    if (lba % blocks !== 0 || lba + blocks > device.blockCount || lba < 0) seen.badLba.push(lba);
    if (seen.lanesBusy.has(lane)) seen.laneTwice++;
    seen.lanesBusy.add(lane);
    seen.maxInFlight = Math.max(seen.maxInFlight, ++seen.inFlight);
    const ok = seen.started % 7 !== 0;
    if (!ok) seen.failed++;
    setImmediate(() => {
      seen.inFlight--;
      seen.ended++;
      seen.lanesBusy.delete(lane);
      load.done(lane, ok);
    });
    return true;
  };
  return { device, seen, start };
}

test('keeps depth reads in flight, one per lane, at block-aligned LBAs inside the device; counts errors; stops with nothing in flight', async (t) => {
  const { device, seen, start } = fakeDevice();
  const load = new RandomReads(device, { depth: 8, bytes: 4096, seconds: 0.2, warmupSeconds: 0.05 });
  const result = await load.run(start(load));
  t.is(seen.maxInFlight, 8);
  t.is(seen.laneTwice, 0, 'a lane had two reads in flight');
  t.deepEqual(seen.badLba, []);
  t.is(seen.inFlight, 0, 'the load resolved with reads still in flight');
  t.true(result.ios > 0 && result.ios < seen.ended, `ios ${result.ios} counts the window only (of ${seen.ended} reads)`);
  t.is(result.errors, seen.failed);
  t.true(result.p50Us <= result.p99Us);
  t.is(result.iops, result.ios / result.seconds);
  const after = seen.started;
  await new Promise((r) => setTimeout(r, 50));
  t.is(seen.started, after, 'no read started after the load ended');
});

test('a lane whose read cannot start stays idle; the load still ends', async (t) => {
  const { device, seen, start } = fakeDevice(20);
  const load = new RandomReads(device, { depth: 4, bytes: 512, seconds: 0.05, warmupSeconds: 0 });
  await load.run(start(load));
  t.is(seen.started, 20);
  t.is(seen.inFlight, 0);
});

test('bad geometry is refused with the reason', (t) => {
  t.throws(() => new RandomReads({ blockSize: 512, blockCount: 1000 }, { depth: 0, bytes: 512, seconds: 1, warmupSeconds: 0 }), { message: /depth 0/ });
  t.throws(() => new RandomReads({ blockSize: 512, blockCount: 1000 }, { depth: 1, bytes: 100, seconds: 1, warmupSeconds: 0 }), { message: /multiple of the 512-byte block/ });
  t.throws(() => new RandomReads({ blockSize: 512, blockCount: 4 }, { depth: 1, bytes: 4096, seconds: 1, warmupSeconds: 0 }), { message: /does not fit/ });
});
