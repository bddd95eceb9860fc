/**
 * Timers owned by the bus (drivers/kit/timers.ts, DriverBus.timers()): what
 * a driver set in one incarnation is gone when the host takes the device
 * back. On an AttachedBus over a shared fake (no hardware): each kind of
 * timer set, the bus released, and none fires; a pending sleep rejects;
 * scheduling after release is refused as the bus's other calls are.
 */
import test from 'ava';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { AttachedBus } from '../../workers/driver-bus.js';
import { DeviceMeter } from '../../actors/meter.js';
import { PciDevice } from '../../pci/device.js';
import { sharedFakePort } from '../support/shared-fake.js';

const A = '0000:00:08.0';

function attachedBus() {
  const fake = sharedFakePort({ [A]: { vendor: 0x1234, device: 0x0001, irqs: { msi: 1 } } });
  const device = PciDevice.open(A, { port: fake });
  const hooks = { name: 'timers', watchdogMs: 1000, services: { provide: () => () => {}, consume: () => Promise.reject(new Error('no services here')), release: () => {} }, meter: new DeviceMeter(), onStall: () => {}, onNote: () => {} };
  return { bus: new AttachedBus(device, 0, hooks), device };
}

/** Resolves after `ms` of real time, on a timer the bus does not own. */
const after = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test('timers run while the incarnation holds the device: a timeout once, an interval repeatedly, an immediate next turn, a sleep resolves', async (t) => {
  const { bus, device } = attachedBus();
  t.teardown(() => device.close());
  const timers = bus.timers();
  const fired: string[] = [];
  timers.timeout(5, () => fired.push('timeout'));
  timers.immediate(() => fired.push('immediate'));
  // Three ticks of the interval, however loaded the machine: awaited, not timed.
  await new Promise<void>((resolve) => {
    let ticks = 0;
    const interval = timers.interval(2, () => {
      if (++ticks < 3) return;
      interval.cancel();
      resolve();
    });
  });
  await timers.sleep(10);
  t.deepEqual(fired.sort(), ['immediate', 'timeout']);
  bus.release();
});

test('release reclaims every timer: none fires after it, a pending sleep rejects, and new ones are refused like the bus\'s other calls', async (t) => {
  const { bus, device } = attachedBus();
  t.teardown(() => device.close());
  const timers = bus.timers();
  const fired: string[] = [];
  timers.timeout(5, () => fired.push('timeout'));
  timers.interval(1, () => fired.push('interval'));
  timers.immediate(() => fired.push('immediate'));
  const sleeping = timers.sleep(5);
  bus.release();
  await t.throwsAsync(sleeping, { message: /DriverBus was reclaimed by the host/ });
  await after(30);
  await nextTurn();
  t.deepEqual(fired, [], 'nothing the released incarnation set ran');
  t.throws(() => timers.timeout(1, () => {}), { message: /DriverBus was reclaimed by the host/ });
  t.throws(() => timers.interval(1, () => {}), { message: /DriverBus was reclaimed by the host/ });
  t.throws(() => timers.immediate(() => {}), { message: /DriverBus was reclaimed by the host/ });
  await t.throwsAsync(timers.sleep(1), { message: /DriverBus was reclaimed by the host/ });
  t.throws(() => bus.timers(), { message: /DriverBus was reclaimed by the host/ });
});

test('a cancelled timer does not fire, and cancelling one that fired or was reclaimed does nothing', async (t) => {
  const { bus, device } = attachedBus();
  t.teardown(() => device.close());
  const timers = bus.timers();
  const fired: string[] = [];
  const once = timers.timeout(1, () => fired.push('once'));
  timers.timeout(1, () => fired.push('cancelled')).cancel();
  await timers.sleep(10);
  once.cancel();
  t.deepEqual(fired, ['once']);
  bus.release();
  once.cancel();
});
