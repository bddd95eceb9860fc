/**
 * The host's device set changing while it runs, on the fake kernel port and a fake watcher (test/support/
 * fake-watcher.ts): match entries claim devices as they appear (binding them when the entry may), a device the
 * kernel takes back and that comes back is claimed again, and a reload (reconfigure) claims, releases and
 * restarts exactly what changed, or, refused, changes nothing.
 */
import test from 'ava';
import { parseHostConfig } from '../../actors/config.js';
import { DriverHost } from '../../actors/host.js';
import type { PciAddress } from '../../kernel/pci-address.js';
import { until as untilWithin } from '../support/bounded.js';
import { FakeWatcher } from '../support/fake-watcher.js';
import { record, states } from '../support/host-events.js';
import { RequestBench, requestRegistry as registry } from '../support/request-bench.js';

const A = '0000:00:04.0';
const B = '0000:00:05.0';
const C = '0000:03:00.0';
const D = '0000:04:00.0';

const config = (devices: unknown[]) =>
  parseHostConfig({ restart: { initialDelayMs: 10, maxDelayMs: 40, maxRestarts: 3 }, watchdogMs: 500, statsIntervalMs: 50, devices }, registry);

const until = (what: string, predicate: () => boolean, ms = 5000): Promise<void> => untilWithin(what, predicate, ms);

const count = (host: DriverHost, address: string) => host.interruptCount(address as PciAddress);

test('a match entry claims its devices as they appear, binding one when it may; one the kernel takes back and that comes back is claimed again; the others never stop', async (t) => {
  const bench = new RequestBench();
  const watcher = new FakeWatcher();
  watcher.add(A);
  const host = DriverHost.claim(config([
    { address: A, driver: 'req-test' },
    { match: { vendor: '1234', slot: '21' }, driver: 'req-test', bind: true },
  ]), { registry, open: bench.open, watcher });
  const events = record(t, host);
  host.start();
  await until('A running', () => states(events, A).includes('running'));

  // C appears in slot 21 bound to no driver: bound to vfio-pci, claimed, run. D, in another slot, is not wanted.
  watcher.add(C, { driver: undefined, slot: '21' });
  watcher.add(D, { slot: '22' });
  await until('C running', () => states(events, C).includes('running'));
  t.deepEqual(watcher.binds, [C]);
  t.false(events.some((e) => 'address' in e && e.address === D), 'D is no entry\'s');
  bench.fire(C);
  await until('an interrupt of C', () => count(host, C) === 1);

  // Hot-unplug of C: the kernel's device request, then vfio-pci lets go of it, then it is gone from the bus.
  const aBefore = count(host, A);
  bench.requests.get(C)!.fire();
  await until('C removed', () => events.some((e) => e.type === 'removed' && e.address === C));
  // Between the removal and the unbind, the device is still bound to vfio-pci: it must not be taken again.
  watcher.driver(C, 'vfio-pci');
  watcher.driver(C, undefined);
  bench.absent.add(C);
  watcher.remove(C);
  t.is(bench.opens.get(C), 1, 'not claimed again while it goes');

  // It comes back (bound to no driver again): bound, claimed for its match entry, run, and it takes interrupts.
  bench.absent.delete(C);
  watcher.add(C, { driver: undefined, slot: '21' });
  await until('C running again', () => states(events, C).filter((s) => s === 'running').length === 2);
  t.deepEqual(watcher.binds, [C, C]);
  t.is(bench.opens.get(C), 2);
  bench.fire(C);
  await until('an interrupt of the new C', () => count(host, C) === 2);
  t.deepEqual(states(events, C), ['claimed', 'attaching', 'running', 'removing', 'released', 'claimed', 'attaching', 'running']);

  // A never stopped.
  bench.fire(A);
  await until('an interrupt of A', () => count(host, A) === aBefore + 1);
  t.deepEqual(states(events, A), ['claimed', 'attaching', 'running']);

  const report = await host.shutdown();
  t.deepEqual(report.devices.map((d) => [d.address, d.outcome.kind]), [[A, 'stopped'], [C, 'removed'], [C, 'stopped']]);
  t.true(watcher.closed, 'the host closes its watcher');
});

test('a device unbound from vfio-pci by an administrator is not bound back, even by an entry that may bind; bound to vfio-pci again, it is claimed again', async (t) => {
  const bench = new RequestBench();
  const watcher = new FakeWatcher();
  watcher.add(C);
  const host = DriverHost.claim(config([{ match: { vendor: '1234' }, driver: 'req-test', bind: true }]), { registry, open: bench.open, watcher });
  const events = record(t, host);
  host.start();
  await until('C running', () => states(events, C).includes('running'));
  bench.requests.get(C)!.fire();
  // vfio-pci's unbind completes once the host has closed the device.
  await until('C released', () => states(events, C).includes('released'));
  watcher.driver(C, undefined);
  // Another device's change makes the host reconcile: C is still left alone.
  watcher.add(D, { vendor: 0x8086 });
  t.deepEqual(watcher.binds, []);
  t.is(bench.opens.get(C), 1);
  watcher.driver(C, 'vfio-pci');
  await until('C running again', () => states(events, C).filter((s) => s === 'running').length === 2);
  t.deepEqual(watcher.binds, [], 'bound by the administrator, not by the host');
});

test('a reload claims the added entry, releases the removed one, restarts the changed one and leaves the unchanged one running', async (t) => {
  const bench = new RequestBench();
  const watcher = new FakeWatcher();
  for (const a of [A, B, C, D]) watcher.add(a);
  const host = DriverHost.claim(config([
    { address: A, driver: 'req-test' },
    { address: B, driver: 'req-test' },
    { address: C, driver: 'req-test', options: { dmaBytes: 4096 } },
  ]), { registry, open: bench.open, watcher });
  const events = record(t, host);
  host.start();
  await until('A, B, C running', () => [A, B, C].every((a) => states(events, a).includes('running')));

  const report = await host.reconfigure(() => config([
    { address: C, driver: 'req-test', options: { dmaBytes: 8192 } },
    { address: D, driver: 'req-test' },
    { address: A, driver: 'req-test' },
  ]));
  t.deepEqual(report, { claimed: [D], released: [B], restarted: [C] });
  await until('D running, B released, C running again', () => states(events, D).includes('running') && states(events, B).includes('released')
    && states(events, C).filter((s) => s === 'running').length === 2);
  t.deepEqual(states(events, A), ['claimed', 'attaching', 'running'], 'A untouched');
  t.is(bench.opens.get(A), 1);
  t.deepEqual(states(events, B), ['claimed', 'attaching', 'running', 'detaching', 'released']);
  t.deepEqual(states(events, C), ['claimed', 'attaching', 'running', 'detaching', 'released', 'claimed', 'attaching', 'running']);
  t.is(bench.opens.get(C), 2);
  t.like(events.find((e) => e.type === 'host' && e.phase === 'reloaded'), { detail: `claimed ${D}; released ${B}; restarted ${C}` });
  // A still takes interrupts.
  bench.fire(A);
  await until('an interrupt of A', () => count(host, A) === 1);
});

test('a reload that cannot claim a new entry\'s device is refused and changes nothing', async (t) => {
  const bench = new RequestBench();
  const watcher = new FakeWatcher();
  for (const a of [A, B]) watcher.add(a);
  bench.absent.add(D);
  const host = DriverHost.claim(config([{ address: A, driver: 'req-test' }, { address: B, driver: 'req-test' }]), { registry, open: bench.open, watcher });
  const events = record(t, host);
  host.start();
  await until('A, B running', () => [A, B].every((a) => states(events, a).includes('running')));
  const error = await t.throwsAsync(host.reconfigure(() => config([{ address: A, driver: 'req-test', options: { dmaBytes: 8192 } }, { address: D, driver: 'req-test' }])));
  t.is(error?.message.split('\n')[0], `devices[1].address: cannot claim ${D}: no PCI device at ${D}`);
  t.like(events.find((e) => e.type === 'host' && e.phase === 'reload-refused'), { detail: `devices[1].address: cannot claim ${D}: no PCI device at ${D}` });
  // Nothing released, restarted or claimed, then or later.
  await new Promise((r) => setTimeout(r, 100));
  t.deepEqual(states(events, A), ['claimed', 'attaching', 'running']);
  t.deepEqual(states(events, B), ['claimed', 'attaching', 'running']);
  t.false(events.some((e) => e.type === 'host' && e.phase === 'reloaded'));
  // A config that does not validate is refused the same way.
  await t.throwsAsync(host.reconfigure(() => config([{ address: A, driver: 'no-such-driver' }])), { message: /devices\[0\]\.driver: unknown driver "no-such-driver"/ });
  t.is(events.filter((e) => e.type === 'host' && e.phase === 'reload-refused').length, 2);
  // The old config still rules: a later change reconciles against it (B stays).
  watcher.add(C);
  t.deepEqual(states(events, B), ['claimed', 'attaching', 'running']);
});
