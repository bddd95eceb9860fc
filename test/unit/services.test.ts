/**
 * The service layer (services/service.ts, services/service-registry.ts) across
 * real worker threads: "driver threads" on fake devices
 * (test/support/service-thread.ts, a DriverBus whose services go through
 * the thread's own link to this thread's ServiceRegistry), providing and
 * consuming in-memory block devices. A take-back is what the device actor
 * does for a driver thread: withdrawProvided, the worker terminated, the
 * link closed.
 */
import test from 'ava';
import { blockService } from '../../services/block-service.js';
import { ServiceRegistry } from '../../services/service-registry.js';
import { BlockGoneError, type BlockDevice } from '../../drivers/block.js';
import type { PacketsSeen } from '../support/service-thread.js';
import { driverThread, type DriverThreadFake } from '../support/driver-thread-fake.js';
import { NetPort } from '../../services/net-port.js';
import { packetService } from '../../services/packet-service.js';
import { fakeBlockDevice } from '../support/fake-block-device.js';
import { until, untilAnswer, within } from '../support/bounded.js';
import { wokenByNotify } from '../support/wake-ups.js';
import type { BesideProbeSetup } from '../support/beside-probe.js';
import { threadId } from 'node:worker_threads';

/** A registry, a driver thread providing disk0n1 (every block holding `fill`), and a driver thread to consume it. */
async function providerAndConsumer(t: { teardown(fn: () => unknown): void }, fill: number, providerLabel = 'provider') {
  const registry = new ServiceRegistry();
  const provider = driverThread(t, registry, providerLabel);
  const consumer = driverThread(t, registry, 'consumer');
  await provider.call({ cmd: 'provide', name: 'disk0n1', fill });
  return { registry, provider, consumer };
}

/** Waits (bounded) until the provider serves `n` exports. */
async function liveExports(provider: DriverThreadFake, n: number, what: string): Promise<void> {
  await untilAnswer(`${what}: the provider serving ${n} exports`, () => provider.stats(), (s) => s.liveExports === n, 5_000);
}

test.serial('a driver thread reads and writes another driver thread\'s block device; per I/O neither thread posts a message (the rings go between them)', async (t) => {
  const { registry, provider, consumer } = await providerAndConsumer(t, 0x11);
  t.is(await consumer.call({ cmd: 'read', name: 'disk0n1', lba: 9 }), 0x11, 'the provider\'s disk, as provided');
  await consumer.call({ cmd: 'write', name: 'disk0n1', lba: 5, byte: 0x42, shared: false });
  await consumer.call({ cmd: 'write', name: 'disk0n1', lba: 6, byte: 0x43, shared: true });
  t.is(await provider.call({ cmd: 'peek', lba: 5 }), 0x42, 'the write reached the provider\'s own device (bounce copy)');
  t.is(await provider.call({ cmd: 'peek', lba: 6 }), 0x43, 'the write reached the provider\'s own device (shared memory)');
  t.is(await consumer.call({ cmd: 'read', name: 'disk0n1', lba: 5 }), 0x42);
  t.is((await provider.stats()).liveExports, 1, 'one export, for the one consumer thread');
  t.is(registry.liveExports, 1);

  const before = [await provider.stats(), await consumer.stats()];
  for (let i = 0; i < 50; i++) {
    await consumer.call({ cmd: 'write', name: 'disk0n1', lba: 100 + i, byte: i, shared: false });
    if (await consumer.call({ cmd: 'read', name: 'disk0n1', lba: 100 + i }) !== i) t.fail(`block ${100 + i} did not read back`);
  }
  const after = [await provider.stats(), await consumer.stats()];
  t.deepEqual(after.map((s) => s.servicePosts), before.map((s) => s.servicePosts), '100 I/Os: no message from either thread');
  // One at a time: each request and each completion is a wake-up of a waiting consumer, by its notify.
  wokenByNotify(t, 'the provider (requests)', before[0]!.wakeUps, after[0]!.wakeUps, 100);
  wokenByNotify(t, 'the consumer (completions)', before[1]!.wakeUps, after[1]!.wakeUps, 100);
  t.true(await consumer.call({ cmd: 'same', name: 'disk0n1' }), 'bus.blockDevice gives the same proxy again');
  t.is((await provider.stats()).liveExports, 1, 'asking again makes no new export');
});

test.serial('the provider\'s take-back fails the consumer\'s pending request with BlockGoneError; the consumer\'s next bus.blockDevice waits for and gets the next incarnation\'s device', async (t) => {
  const { registry, provider: first, consumer } = await providerAndConsumer(t, 0xa0, 'provider #0');
  await consumer.call({ cmd: 'hang', name: 'disk0n1' });
  await first.takeBack();
  const settled = await consumer.call<{ name: string; message: string }>({ cmd: 'settled' });
  t.is(settled.name, 'BlockGoneError');
  t.regex(settled.message, /disk0n1: the host took provider #0 back from its driver/);
  t.is(await consumer.call({ cmd: 'old' }), 'BlockGoneError', 'the old proxy refuses new requests');
  t.is(registry.liveExports, 0);

  // Asked before the next incarnation provides: the consumer waits for it.
  const again = consumer.call({ cmd: 'read', name: 'disk0n1', lba: 3 });
  const second = driverThread(t, registry, 'provider #1');
  await second.call({ cmd: 'provide', name: 'disk0n1', fill: 0xa1 });
  t.is(await again, 0xa1, 'the new incarnation\'s device');
  t.false(await consumer.call({ cmd: 'same', name: 'disk0n1' }), 'a new proxy, not the closed one');
  t.is((await second.stats()).liveExports, 1);
});

test.serial('two consumer threads at once each get an export of their own and see each other\'s writes on the one device', async (t) => {
  const registry = new ServiceRegistry();
  const provider = driverThread(t, registry, 'provider');
  const a = driverThread(t, registry, 'consumer a');
  const b = driverThread(t, registry, 'consumer b');
  await provider.call({ cmd: 'provide', name: 'disk0n1', fill: 0 });
  await a.call({ cmd: 'write', name: 'disk0n1', lba: 1, byte: 0xaa, shared: false });
  await b.call({ cmd: 'write', name: 'disk0n1', lba: 2, byte: 0xbb, shared: true });
  t.is((await provider.stats()).liveExports, 2, 'two exports: rings have one producer');
  t.is(registry.liveExports, 2);
  // Interleaved, both still served after the second joined.
  await Promise.all(Array.from({ length: 20 }, async (_, i) => {
    await a.call({ cmd: 'write', name: 'disk0n1', lba: 10 + i, byte: i, shared: false });
    await b.call({ cmd: 'write', name: 'disk0n1', lba: 40 + i, byte: i + 1, shared: false });
  }));
  t.deepEqual(await Promise.all([b.call({ cmd: 'read', name: 'disk0n1', lba: 1 }), a.call({ cmd: 'read', name: 'disk0n1', lba: 2 })]), [0xaa, 0xbb]);
  t.deepEqual(await Promise.all([b.call({ cmd: 'read', name: 'disk0n1', lba: 29 }), a.call({ cmd: 'read', name: 'disk0n1', lba: 59 })]), [19, 20]);
});

test.serial('a consumer thread\'s take-back stops its export in the provider\'s thread: over three consumer restarts the provider\'s live exports and open ports return to what they were', async (t) => {
  const registry = new ServiceRegistry();
  const provider = driverThread(t, registry, 'provider');
  const steady = driverThread(t, registry, 'steady consumer');
  await provider.call({ cmd: 'provide', name: 'disk0n1', fill: 7 });
  t.is(await steady.call({ cmd: 'read', name: 'disk0n1', lba: 0 }), 7);
  const { liveExports: baseline, openPorts } = await provider.stats();
  t.is(baseline, 1);
  for (let incarnation = 0; incarnation < 3; incarnation++) {
    const consumer = driverThread(t, registry, `consumer #${incarnation}`);
    await consumer.call({ cmd: 'write', name: 'disk0n1', lba: incarnation, byte: 0x30 + incarnation, shared: true });
    t.like(await provider.stats(), { liveExports: baseline + 1, openPorts: openPorts + 1 }, 'one more export, with its port');
    await consumer.takeBack();
    // The stop reaches the provider as a message on its link, not in order with this test's own.
    await liveExports(provider, baseline, `consumer #${incarnation}'s export stopped`);
    t.is((await provider.stats()).openPorts, openPorts, `consumer #${incarnation}'s export's port closed`);
    t.is(registry.liveExports, baseline);
  }
  t.is(await steady.call({ cmd: 'read', name: 'disk0n1', lba: 2 }), 0x32, 'the other consumer kept its export throughout');
});

test.serial('a driver thread\'s own take-back (DriverBus.release) withdraws what it provides: consumers\' pending requests fail with BlockGoneError', async (t) => {
  const { registry, provider, consumer } = await providerAndConsumer(t, 0);
  await consumer.call({ cmd: 'hang', name: 'disk0n1' });
  t.is((await provider.stats()).liveExports, 1);
  await provider.call({ cmd: 'release' });
  t.is((await consumer.call<{ name: string }>({ cmd: 'settled' })).name, 'BlockGoneError');
  t.is((await provider.stats()).liveExports, 0, 'its exports stopped');
  t.is(registry.liveExports, 0);
});

test.serial('in the main thread: a thread\'s device is this thread\'s own export (a proxy); a device provided here is the object itself, also when asked for before it was provided; a name never provided times out naming what is', async (t) => {
  const registry = new ServiceRegistry();
  const provider = driverThread(t, registry, 'provider');
  await provider.call({ cmd: 'provide', name: 'disk0n1', fill: 0x5a });
  const proxy = await registry.local.consume(blockService, 'disk0n1', 10_000);
  t.is((await proxy.read(0, 1))[0], 0x5a);
  t.is(await registry.local.consume(blockService, 'disk0n1', 10_000), proxy, 'the same proxy again');

  const here = fakeBlockDevice('here0n1').device;
  const early = registry.local.consume(blockService, 'here0n1', 10_000);
  const withdraw = registry.local.provide(blockService, 'here0n1', here);
  t.is(await within(5_000, early, 'the early ask was never answered'), here, 'asked before it was provided: still the object itself');
  t.is(await registry.local.consume(blockService, 'here0n1', 10_000), here);
  const consumer = driverThread(t, registry, 'consumer');
  await consumer.call({ cmd: 'write', name: 'here0n1', lba: 4, byte: 0x77, shared: false });
  t.is((await here.read(4, 1))[0], 0x77, 'a driver thread writes a device provided in the main thread');
  withdraw();

  const missing = await t.throwsAsync(registry.local.consume(blockService, 'nothing0n1', 300));
  t.is(missing!.message, 'no block device "nothing0n1" within 300 ms (provided now: disk0n1)');
  await provider.takeBack();
  await t.throwsAsync(within(5_000, (proxy as BlockDevice).read(0, 1), 'a read on the proxy after its provider\'s take-back never settled'), { instanceOf: BlockGoneError });
});

const BESIDE_PROBE = { module: new URL('../support/beside-probe.js', import.meta.url).href, args: { lba: 7 } };

test.serial('serveBeside runs the named module in the provider\'s thread on its own object (not a proxy); it stops when its provider is taken back (gone, with the reason) or when its consumer stops it; on a provider in the asking thread it runs there', async (t) => {
  const registry = new ServiceRegistry();
  const first = driverThread(t, registry, 'provider #0');
  await first.call({ cmd: 'provide', name: 'disk0n1', fill: 0x31 });
  const proxyKind = (await registry.local.consume(blockService, 'disk0n1', 10_000)).constructor.name;
  const handle = await registry.local.serveBeside<BlockDevice, unknown, { lba: number }, BesideProbeSetup>(blockService, 'disk0n1', BESIDE_PROBE, 10_000);
  t.not(handle.setup.threadId, threadId, 'it ran in another thread');
  t.is(handle.setup.byte, 0x31, 'on the provider\'s device');
  t.not(handle.setup.kind, proxyKind, `on the provider's own object (${handle.setup.kind}), not a proxy (${proxyKind})`);
  const closed = new Promise<void>((resolve) => handle.setup.port.once('close', resolve));
  handle.setup.port.start();
  await first.takeBack();
  t.is(await within(5_000, handle.gone, 'gone never resolved after the take-back'), 'the host took provider #0 back from its driver');
  await within(5_000, closed, 'the task\'s port stayed open after the take-back');

  // The next incarnation: a new run of the task, stopped by its consumer this time.
  const second = driverThread(t, registry, 'provider #1');
  const asked = registry.local.serveBeside<BlockDevice, unknown, { lba: number }, BesideProbeSetup>(blockService, 'disk0n1', BESIDE_PROBE, 10_000);
  await second.call({ cmd: 'provide', name: 'disk0n1', fill: 0x32 });
  const again = await within(10_000, asked, 'a task asked before its provider came was never run');
  t.is(again.setup.byte, 0x32, 'asked before the next incarnation provided: run on it once it did');
  const stopped = new Promise<void>((resolve) => again.setup.port.once('close', resolve));
  again.setup.port.start();
  t.is((await second.stats()).liveExports, 1, 'the task is an export of the provider\'s');
  again.stop();
  await within(5_000, stopped, 'stop() did not stop the task in the provider\'s thread');
  t.is(await again.gone, 'stopped by its consumer');
  await liveExports(second, 0, 'after stop()');

  // Provided in this very thread: the task runs here, and ends with the withdrawal.
  const here = fakeBlockDevice('here0n1').device;
  await here.write(7, new Uint8Array(here.blockSize).fill(0x33));
  const withdraw = registry.local.provide(blockService, 'here0n1', here);
  const local = await registry.local.serveBeside<BlockDevice, unknown, { lba: number }, BesideProbeSetup>(blockService, 'here0n1', BESIDE_PROBE, 10_000);
  t.is(local.setup.threadId, threadId, 'a provider in this thread: run here');
  t.is(local.setup.byte, 0x33);
  withdraw();
  t.regex(await within(5_000, local.gone, 'a local task was not ended by the withdrawal'), /here0n1 was withdrawn/);
});

/** What `consumer`'s packet port has seen, once `done` holds of it (bounded). */
const packetsWhen = (consumer: DriverThreadFake, what: string, done: (seen: PacketsSeen) => boolean) =>
  untilAnswer(what, () => consumer.call<PacketsSeen>({ cmd: 'packets' }), done, 10_000);

test.serial('a driver thread takes another driver thread\'s packet port (bus.packetPort): frames in order over rings between the two; released with the consumer, the port is free for the host\'s programs', async (t) => {
  const registry = new ServiceRegistry();
  const provider = driverThread(t, registry, 'nic driver');
  const consumer = driverThread(t, registry, 'consumer driver');
  await provider.call({ cmd: 'provide-packets' });
  await consumer.call({ cmd: 'consume-packets', name: 'fixture' });
  await packetsWhen(consumer, 'attach', (s) => s.attached);
  await provider.call({ cmd: 'deliver', from: 0, count: 500 });
  t.like(await packetsWhen(consumer, '500 frames', (s) => s.frames >= 500), { frames: 500, outOfOrder: 0, last: 499 }, 'every frame once, in order, through 16 buffers');
  t.is((await provider.stats()).liveExports, 1, 'one export, to the consumer driver\'s thread');

  // The host's programs' port waits while the driver holds it (one consumer at a time).
  let answered = 0;
  const ask = () => registry.local.consume(packetService, 'fixture', 500).finally(() => answered++);
  const hostPort = new NetPort('fixture', ask, (reason) => registry.local.release(packetService, 'fixture', reason));
  t.teardown(() => hostPort.close('test over'));
  let hostFrames = 0;
  hostPort.frames.subscribe((frame) => {
    hostFrames++;
    frame.release();
  });
  // Answered twice (a refusal, then the retry's) and still not attached; a port wrongly handed over attaches at the first.
  await until('the host\'s port asked twice for it and was answered, or attached', () => answered >= 2 || hostPort.attached !== undefined, 10_000);
  t.is(hostPort.attached, undefined, 'the port is the consumer driver\'s while it holds it');

  await consumer.call({ cmd: 'release' });
  await liveExports(provider, 1, 'the consumer driver\'s export stopped and the host\'s made');
  await until('the host\'s port attached once the driver gave it back', () => hostPort.attached !== undefined, 10_000);
  await provider.call({ cmd: 'deliver', from: 500, count: 100 });
  await until('the host\'s port received the next 100 frames', () => hostFrames === 100, 10_000);
  t.is((await consumer.call<PacketsSeen>({ cmd: 'packets' })).frames, 500, 'the released consumer got nothing more');
});
