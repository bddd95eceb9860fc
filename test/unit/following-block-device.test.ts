/**
 * FollowingBlockDevice (what an NBD export serves): one object across its
 * provider's incarnations, over the real service layer. The provider is a
 * "driver thread" on a fake (test/support/driver-thread-fake.ts) whose
 * take-back is the device actor's; the follower asks the main thread's
 * services for each incarnation, as the host's exports do.
 */
import test from 'ava';
import { blockService } from '../../services/block-service.js';
import { FollowingBlockDevice, type FollowOptions } from '../../exports/following-block-device.js';
import { ServiceRegistry } from '../../services/service-registry.js';
import { BlockGoneError } from '../../drivers/block.js';
import { UpciError } from '../../kernel/errors.js';
import { until, within } from '../support/bounded.js';
import { driverThread } from '../support/driver-thread-fake.js';

const NAME = 'disk0n1';

/** A registry with a provider thread of disk0n1 (blocks holding `fill`), and a follower of it in this thread. */
async function followed(t: { teardown(fn: () => unknown): void }, options: FollowOptions) {
  const registry = new ServiceRegistry();
  const first = driverThread(t, registry, 'provider #0');
  await first.call({ cmd: 'provide', name: NAME, fill: 0xa0 });
  const consume = (ms: number) => registry.local.consume(blockService, NAME, ms);
  const follows: number[] = [];
  const proxy = await consume(5_000);
  const device = new FollowingBlockDevice(proxy, consume, options, (s) => follows.push(s.incarnations));
  t.teardown(() => device.close('the test ended'));
  return { registry, first, proxy, device, follows, consume };
}

/** Tracks whether a request has settled, without letting its rejection go unhandled. */
function watched<T>(p: Promise<T>) {
  const state = { settled: false, value: undefined as T | undefined, error: undefined as unknown };
  const done = p.then((v) => (state.value = v), (e: unknown) => (state.error = e)).finally(() => (state.settled = true));
  return { state, done };
}

test('a request in flight when the provider is taken back, and requests made while no incarnation is provided, wait and go to the next incarnation: none fails', async (t) => {
  const { registry, first, device, follows } = await followed(t, { waitMs: 20_000, maxWaiting: 16 });
  t.is((await device.read(9, 1))[0], 0xa0, 'the first incarnation serves');
  // The fake's first incarnation never completes LBA 777: in flight at the take-back.
  const inFlight = watched(device.read(777, 1));
  await first.takeBack();
  const write = watched(device.write(5, new Uint8Array(512).fill(0x42)));
  const read = watched(device.read(9, 1));
  await until('the three requests to wait for the next incarnation', () => device.stats.waiting === 3, 5_000);
  t.false(inFlight.state.settled || write.state.settled || read.state.settled, 'nothing failed while no incarnation was provided');

  const second = driverThread(t, registry, 'provider #1');
  await second.call({ cmd: 'provide', name: NAME, fill: 0xb0, hangs: false });
  await within(10_000, Promise.all([inFlight.done, write.done, read.done]), 'the waiting requests never went to the next incarnation');
  t.deepEqual([inFlight.state.error, write.state.error, read.state.error], [undefined, undefined, undefined]);
  t.is(inFlight.state.value![0], 0xb0, 'the request in flight was issued again, to the next incarnation');
  t.is(read.state.value![0], 0xb0, 'the read made during the restart went to the next incarnation');
  t.is(await second.call({ cmd: 'peek', lba: 5 }), 0x42, 'the write made during the restart reached the next incarnation\'s device');
  t.like(device.stats, { incarnations: 2, reissued: 1, waiting: 0 });
  t.deepEqual(follows, [2], 'told once, when it took the next incarnation');

  // And again: the follower does not hold on to the second incarnation either.
  await second.takeBack();
  const third = driverThread(t, registry, 'provider #2');
  await third.call({ cmd: 'provide', name: NAME, fill: 0xc0 });
  t.is((await within(10_000, device.read(9, 1), 'a read after the second restart never completed'))[0], 0xc0);
  t.deepEqual(follows, [2, 3]);
});

test('bounded: past maxWaiting a request is refused at once (BUSY); with no incarnation within waitMs the waiting ones fail with BlockGoneError; close() fails the waiting at once', async (t) => {
  // waitMs bounds how long the two requests are seen waiting: long enough for a loaded host to look, short enough for the test.
  const { first, proxy, device, consume } = await followed(t, { waitMs: 2_000, maxWaiting: 2 });
  await first.takeBack();
  const waiting = [watched(device.read(1, 1)), watched(device.read(2, 1))];
  await until('two requests to wait', () => device.stats.waiting === 2, 5_000);
  const refused = await t.throwsAsync(device.read(3, 1), { instanceOf: UpciError });
  t.is(refused!.code, 'BUSY');
  t.regex(refused!.message, /disk0n1: 2 requests already wait for its driver's next incarnation/);
  await within(5_000, Promise.all(waiting.map((w) => w.done)), 'the waiting requests never timed out');
  for (const w of waiting) {
    t.true(w.state.error instanceof BlockGoneError);
    t.regex((w.state.error as Error).message, /disk0n1: its driver did not come back within 2000 ms/);
  }

  const patient = new FollowingBlockDevice(proxy, consume, { waitMs: 60_000, maxWaiting: 2 });
  const left = watched(patient.read(4, 1));
  await until('a request to wait', () => patient.stats.waiting === 1, 5_000);
  patient.close('the export was closed');
  await within(2_000, left.done, 'close() left a waiting request waiting');
  t.true(left.state.error instanceof BlockGoneError);
  t.regex((left.state.error as Error).message, /the export was closed/);
  await t.throwsAsync(patient.read(4, 1), { instanceOf: BlockGoneError }, 'and refuses what comes after');
});

test('a bad request is refused in this thread with the provider\'s own checks, without waiting for an incarnation', async (t) => {
  const { first, device } = await followed(t, { waitMs: 60_000, maxWaiting: 2 });
  await first.takeBack();
  const error = await within(2_000, t.throwsAsync(device.read(device.blockCount, 1), { instanceOf: UpciError }), 'a bad request waited');
  t.is(error!.code, 'OUT_OF_RANGE');
  t.is(device.stats.waiting, 0);
});

test('registered memory follows: registered with each incarnation, a tagged read in flight at the take-back and requests made while none serves end without error on the next one; the promise API\'s views of it serve too', async (t) => {
  const { registry, first, device } = await followed(t, { waitMs: 20_000, maxWaiting: 16 });
  const memory = device.allocBuffer(4 * 512);
  const ends: [number, Error | undefined][] = [];
  memory.ends.subscribe((end) => ends.push([end.tag, end.error]));
  t.true(memory.read(9, 1, 0, 1));
  await until('the first read to end', () => ends.length === 1, 5_000);
  t.deepEqual(ends, [[1, undefined]]);
  t.is(memory.bytes[0], 0xa0, 'the first incarnation read into the registered memory');

  // LBA 777 never completes on the first incarnation: in flight at the take-back.
  t.true(memory.read(777, 1, 512, 2));
  await first.takeBack();
  memory.bytes.fill(0x42, 1024, 1536);
  t.true(memory.write(5, 1, 1024, 3), 'accepted while no incarnation serves: it waits');
  t.true(memory.read(9, 1, 1536, 4));
  await until('the requests to wait', () => device.stats.waiting === 1, 5_000);
  t.is(ends.length, 1, 'nothing ended while no incarnation was provided');

  const second = driverThread(t, registry, 'provider #1');
  await second.call({ cmd: 'provide', name: NAME, fill: 0xb0, hangs: false });
  await within(10_000, until('the waiting requests to end', () => ends.length === 4, 10_000), 'the waiting requests never went to the next incarnation');
  // Issued again in the order they came; they end as the device completes them (the fake ends LBA 777 later).
  t.deepEqual(ends.slice(1).sort(([a], [b]) => a - b), [[2, undefined], [3, undefined], [4, undefined]], 'none failed');
  t.is(memory.bytes[512], 0xb0, 'the read in flight was issued again, into the same memory');
  t.is(memory.bytes[1536], 0xb0);
  t.is(await second.call({ cmd: 'peek', lba: 5 }), 0x42, 'the write made during the restart reached the next incarnation from the registered memory');
  t.true(device.stats.reissued >= 1);

  const view = memory.bytes.subarray(2048, 2560);
  await device.read(9, 1, view);
  t.is(view[0], 0xb0, 'a view of the memory through the promise API');
  memory.unregister();
  t.throws(() => memory.read(9, 1, 0, 5), { message: /not registered/ });
});
