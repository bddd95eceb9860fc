/**
 * The kernel's channels about a device on the fake kernel port. The device
 * request (VFIO_PCI_REQ_IRQ_INDEX): a device whose request channel fires
 * (an unbind of vfio-pci, a hot-unplug) is taken back in the one quiesce
 * order (bus mastering off, vectors off, DMA mappings gone), closed,
 * reported `removed`, and not restarted. The error channel
 * (VFIO_PCI_ERR_IRQ_INDEX, AER): an uncorrectable PCIe error is a driver
 * fault naming the errors the kernel counted, quiesced in the same order,
 * reset, and restarted. Either way the other devices keep running.
 */
import test from 'ava';
import { parseHostConfig } from '../../actors/config.js';
import { DriverHost } from '../../actors/host.js';
import { plainLine } from '../../bin/status-view.js';
import type { PciAddress } from '../../kernel/pci-address.js';
import { until as untilWithin } from '../support/bounded.js';
import { RequestBench as Bench, requestRegistry as registry } from '../support/request-bench.js';
import { record, states } from '../support/host-events.js';

const A = '0000:00:04.0';
const B = '0000:00:05.0';


const config = (devices: unknown[]) =>
  parseHostConfig({ restart: { initialDelayMs: 10, maxDelayMs: 40, maxRestarts: 3 }, watchdogMs: 500, statsIntervalMs: 50, devices }, registry);


const until = (what: string, predicate: () => boolean, ms = 5000): Promise<void> => untilWithin(what, predicate, ms);

test('a device request removes the device: quiesced in the one order, closed, reported removed, not restarted; the other device keeps running', async (t) => {
  const bench = new Bench();
  const host = DriverHost.claim(config([{ address: A, driver: 'req-test' }, { address: B, driver: 'req-test' }]), { registry, open: bench.open });
  const events = record(t, host);
  t.true(bench.requests.get(A)!.registered, 'the request channel is registered at claim');
  host.start();
  await until('both running', () => states(events, A).includes('running') && states(events, B).includes('running'));
  bench.fire(A);
  bench.fire(B);
  await until('one interrupt each', () => host.interruptCount(A as PciAddress) === 1 && host.interruptCount(B as PciAddress) === 1);

  // The kernel asks, and (as vfio_pci_core_request does until the close) asks again.
  bench.requests.get(A)!.fire();
  bench.requests.get(A)!.fire();
  await until('removed', () => events.some((e) => e.type === 'removed'));
  const removed = events.find((e) => e.type === 'removed');
  t.like(removed, { address: A, incarnation: 0 });
  t.true(removed!.type === 'removed' && removed!.requests >= 1);
  t.regex(plainLine(removed!), /removed: the kernel asked for the device back/);
  t.like(events.find((e) => e.type === 'released' && e.address === A), { outcome: { kind: 'removed' }, release: { how: 'close', error: undefined } });
  t.deepEqual(states(events, A), ['claimed', 'attaching', 'running', 'removing', 'released']);

  // The one quiesce order: bus mastering off, then the vectors, then the DMA mappings, then the close.
  t.deepEqual(bench.calls.filter((c) => c.startsWith(A)), [
    `${A} vectors off (bus master off, vectors on, 1 mapping(s))`,
    `${A} unmap (bus master off, vectors off, 1 mapping(s))`,
    `${A} close (bus master off, vectors off, 0 mapping(s))`,
  ]);
  t.false(bench.requests.get(A)!.registered, 'the device is closed: the kernel\'s unbind can complete');

  // No restart: never reopened, no fault, no restart event, however long we wait.
  await new Promise((r) => setTimeout(r, 100));
  t.is(bench.opens.get(A), 1);
  t.false(events.some((e) => (e.type === 'restart' || e.type === 'fault') && e.address === A));

  // B never stopped: same states, and it still takes interrupts.
  for (let i = 2; i <= 4; i++) {
    bench.fire(B);
    await until(`B interrupt ${i}`, () => host.interruptCount(B as PciAddress) === i);
  }
  t.deepEqual(states(events, B), ['claimed', 'attaching', 'running']);
  t.true(bench.busMaster(B));
  t.deepEqual(bench.calls.filter((c) => c.startsWith(B)), []);

  const report = await host.shutdown();
  t.like(report.devices.find((d) => d.address === A), { outcome: { kind: 'removed' } });
  t.like(report.devices.find((d) => d.address === B), { outcome: { kind: 'stopped' } });
});

test('a device request that comes during an attach is remembered: the attach settles, then the device is removed, never run', async (t) => {
  const bench = new Bench();
  const host = DriverHost.claim(config([{ address: A, driver: 'req-test', options: { attachDelayMs: 300 } }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('attaching', () => states(events, A).includes('attaching'));
  bench.requests.get(A)!.fire();
  await until('released', () => states(events, A).includes('released'));
  t.deepEqual(states(events, A), ['claimed', 'attaching', 'removing', 'released']);
  t.like(events.find((e) => e.type === 'released'), { outcome: { kind: 'removed' } });
  t.true(events.some((e) => e.type === 'removed'));
  t.is(bench.calls.at(-1), `${A} close (bus master off, vectors off, 0 mapping(s))`);
});

test('a device without a request channel is still claimed and driven', async (t) => {
  const bench = new Bench([A]);
  const host = DriverHost.claim(config([{ address: A, driver: 'req-test' }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('running', () => states(events, A).includes('running'));
  bench.fire(A);
  await until('interrupt', () => host.interruptCount(A as PciAddress) === 1);
  t.false(bench.requests.get(A)!.registered);
  const report = await host.shutdown();
  t.like(report.devices[0], { outcome: { kind: 'stopped' } });
});

test('an uncorrectable PCIe error is a driver fault naming the error: quiesced in the one order, reset through the kernel, restarted; the other device keeps running', async (t) => {
  const bench = new Bench();
  const host = DriverHost.claim(config([{ address: A, driver: 'req-test' }, { address: B, driver: 'req-test' }]), { registry, open: bench.open });
  const events = record(t, host);
  t.true(bench.errors.get(A)!.registered, 'the error channel is registered at claim');
  host.start();
  await until('both running', () => states(events, A).includes('running') && states(events, B).includes('running'));

  bench.pcieError(A, 'UnsupReq', 'nonfatal');
  await until('A running again', () => states(events, A).filter((s) => s === 'running').length === 2);
  const fault = events.find((e) => e.type === 'fault');
  t.like(fault, { address: A, fault: { kind: 'pcie-error', incarnation: 0, message: 'uncorrectable PCIe error reported by the kernel (AER): UnsupReq (nonfatal)' } });
  t.regex(plainLine(fault!), /fault pcie-error: uncorrectable PCIe error reported by the kernel \(AER\): UnsupReq \(nonfatal\)/);
  t.like(events.find((e) => e.type === 'restart'), { address: A, attempt: 1, reset: 'kernel-reset' });
  t.deepEqual(states(events, A), ['claimed', 'attaching', 'running', 'failed', 'resetting', 'attaching', 'running']);
  // The one quiesce order, then the reset, with the device never closed.
  t.deepEqual(bench.calls.filter((c) => c.startsWith(A)), [
    `${A} vectors off (bus master off, vectors on, 1 mapping(s))`,
    `${A} unmap (bus master off, vectors off, 1 mapping(s))`,
    `${A} reset (bus master off, vectors off, 0 mapping(s))`,
  ]);
  t.is(bench.opens.get(A), 1);

  // The restarted driver takes interrupts; B never stopped.
  bench.fire(A);
  await until('an interrupt on the restarted driver', () => host.interruptCount(A as PciAddress) === 1);
  bench.fire(B);
  await until('B interrupt', () => host.interruptCount(B as PciAddress) === 1);
  t.deepEqual(states(events, B), ['claimed', 'attaching', 'running']);
  t.deepEqual(bench.calls.filter((c) => c.startsWith(B)), []);
  t.false(events.some((e) => e.type === 'fault' && e.address === B));
});

test('a device the kernel cannot reset is reopened after a PCIe error, with its error channel again; the next error names only what is new', async (t) => {
  const bench = new Bench([], [A]);
  const host = DriverHost.claim(config([{ address: A, driver: 'req-test' }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('running', () => states(events, A).includes('running'));
  bench.pcieError(A, 'CmpltTO', 'nonfatal');
  await until('running again', () => states(events, A).filter((s) => s === 'running').length === 2);
  t.like(events.find((e) => e.type === 'restart'), { reset: 'reopen' });
  t.is(bench.opens.get(A), 2);
  t.is(bench.errors.get(A)!.registrations, 2, 'the reopened device registered its error channel again');

  bench.pcieError(A, 'MalfTLP', 'fatal');
  await until('a second fault', () => events.filter((e) => e.type === 'fault').length === 2);
  t.deepEqual(events.flatMap((e) => (e.type === 'fault' ? [`${e.fault.kind}: ${e.fault.message}`] : [])), [
    'pcie-error: uncorrectable PCIe error reported by the kernel (AER): CmpltTO (nonfatal)',
    'pcie-error: uncorrectable PCIe error reported by the kernel (AER): MalfTLP (fatal)',
  ]);
});

test('a PCIe error during an attach is the attach\'s fault once it settles: the driver never runs on the errored device before a reset', async (t) => {
  const bench = new Bench();
  const host = DriverHost.claim(config([{ address: A, driver: 'req-test', options: { attachDelayMs: 300 } }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('attaching', () => states(events, A).includes('attaching'));
  bench.pcieError(A, 'UnsupReq', 'nonfatal');
  await until('running', () => states(events, A).includes('running'), 10_000);
  t.deepEqual(states(events, A), ['claimed', 'attaching', 'failed', 'resetting', 'attaching', 'running']);
  t.like(events.find((e) => e.type === 'fault'), { fault: { kind: 'pcie-error', incarnation: 0 } });
  t.true(bench.calls.includes(`${A} reset (bus master off, vectors off, 0 mapping(s))`));
});
