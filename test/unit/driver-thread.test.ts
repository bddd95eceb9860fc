/**
 * The driver-thread path without hardware: a driver (test/fixtures/
 * thread-driver.ts) attached in a worker thread of its own over a shared
 * fake (test/support/shared-fake.ts), whose config space and IOMMU table are
 * the same memory in every thread. What the worker does to the device shows
 * in the main thread, and what the main thread takes back is gone for the
 * worker. Covers DriverThread (actors/driver-thread.ts), the worker body
 * (workers/driver-thread-body.ts), the ledger between them and the device actor's
 * thread path (actors/device-machine.ts): attach, heartbeat, the watchdog's
 * silence accounting, the heap watermark, the take-back's order and its
 * read-back, and kill (the worker terminated, its fds closed).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readlinkSync } from 'node:fs';
import { threadId as mainThreadId } from 'node:worker_threads';
import { parseHostConfig } from '../../actors/config.js';
import { rememberSource } from '../../actors/driver-source.js';
import { DriverThread } from '../../actors/driver-thread.js';
import type { HostEvent } from '../../actors/events.js';
import { DriverHost } from '../../actors/host.js';
import { ServiceRegistry } from '../../services/service-registry.js';
import type { AnyDriver } from '../../drivers/contract.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../pci/config.js';
import { PciDevice } from '../../pci/device.js';
import { DEVICE, FAULT_MESSAGE, VENDOR } from '../fixtures/thread-driver.js';
import { until, within } from '../support/bounded.js';
import { recordingPort, throughTheFd, type PortRecord } from '../support/recording-port.js';
import { sharedFakePort, type SharedFakeState } from '../support/shared-fake.js';

const A = '0000:00:07.0';
const fixtureUrl = new URL('../fixtures/thread-driver.js', import.meta.url).href;
const fixture = (await import(fixtureUrl) as { default: AnyDriver }).default;
// As a config naming the module would: the worker imports the driver from its URL.
rememberSource(fixture, fixtureUrl);
const registry = new Map([[fixture.name, fixture]]);

/** A fresh shared fake at A (one MSI vector) behind a port that records the teardown, bus mastering's clearing among it. */
function bench() {
  const records: PortRecord[] = [];
  const fake = sharedFakePort({ [A]: { vendor: VENDOR, device: DEVICE, irqs: { msi: 1 } } });
  const port = recordingPort(fake, records, throughTheFd, { busMasterWrites: true });
  return { records, port, state: (): SharedFakeState => fake.states.get(A)! };
}

/** The take-back, as the recording port sees it: bus mastering off, then the vectors, then the thread's DMA window. */
const TAKE_BACK = [`${A} bus master off`, `${A} disableIrqs msi (bus master off)`, `${A} dma unmap window (bus master off)`];

const busMaster = (state: SharedFakeState) => (state.config.readUInt16LE(PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;

/** Whether `fd` is still an open eventfd of this process (an fd number reused since would be something else). */
function openEventfd(fd: number): boolean {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[eventfd]';
  } catch {
    return false;
  }
}

test('a driver attaches in its own thread over the shared fake; its heartbeat advances; kill takes the device back in order, terminates the worker and closes its fds', async (t) => {
  const { records, port, state } = bench();
  const device = PciDevice.open(A, { port });
  t.teardown(() => device.close());
  const services = new ServiceRegistry().link('fixture');
  const supervision = parseHostConfig({ devices: [{ address: A, driver: fixture.name }] }, registry).devices[0]!.supervision;
  const hangs: string[] = [];
  const thread = new DriverThread({
    device, source: { kind: 'module', url: fixtureUrl }, options: { behave: 'serve', dmaBytes: 2 * 4096, leakMb: 4, leakToMb: 1024 }, incarnation: 0, supervision, name: 'fixture',
    services, onNote: () => {}, onStall: () => {}, onHang: (m) => void hangs.push(m),
  });
  await within(60_000, thread.attached, 'the attach in the driver thread');
  t.not(thread.threadId, mainThreadId);
  // What the worker did shows here: its DMA mapping, bus mastering, the MSI enable bit and the ledger's interrupt kind.
  t.is(state().mappings, 1);
  t.true(busMaster(state()));
  t.true(device.msi()?.enabled);
  t.is(thread.ledger.irqKind, 'msi');
  const made = state().madeIrqFds();
  t.is(made.length, 1);
  t.true(openEventfd(made[0]!), 'the worker made an eventfd for its vector');
  // The heartbeat is a counter: three more beats, whatever the time each took.
  const beat = thread.ledger.heartbeat;
  await until('three heartbeats', () => thread.ledger.heartbeat >= beat + 3, 10_000);
  t.true(thread.ledger.heapUsed > 0);
  t.deepEqual(hangs, [], 'a serving driver is not taken for hung');

  const mark = records.length;
  const report = await thread.kill();
  t.deepEqual(records.slice(mark), [...TAKE_BACK, `${A} dma release window (bus master off)`]);
  t.deepEqual(report, { threadRunning: true, busMaster: false, vectorsDisabled: 'msi', msiEnabled: false, msixEnabled: false, dmaMappingsLeft: 0 });
  t.is(state().mappings, 0, 'the shared IOMMU table is empty');
  // Node gives an exited worker's threadId as -1.
  t.is(thread.threadId, -1, 'the worker was terminated');
  t.false(openEventfd(made[0]!), 'the eventfd the worker held was closed');
  services.close('test over');
});

function claim(t: { teardown(fn: () => unknown): void }, options: Record<string, unknown>, extra: Record<string, unknown>) {
  const { records, port, state } = bench();
  const config = parseHostConfig({
    restart: { initialDelayMs: 10, maxDelayMs: 10, maxRestarts: 1 }, statsIntervalMs: 50, ...extra,
    devices: [{ address: A, driver: fixture.name, options }],
  }, registry);
  const host = DriverHost.claim(config, { registry, open: (address) => PciDevice.open(address, { port }) });
  const events: HostEvent[] = [];
  host.events.subscribe((e) => events.push(e));
  t.teardown(() => host.shutdown());
  host.start();
  return { host, events, records, state };
}

const running = (events: HostEvent[], incarnation: number) => events.some((e) => e.type === 'state' && e.state === 'running' && e.incarnation === incarnation);

/** What the host reported of incarnation 0's end: its fault and what taking it back read. */
async function firstFault(events: HostEvent[]) {
  await until('incarnation 1 running after the take-back', () => running(events, 1), 60_000).catch((e: Error) => {
    // Say what did happen: the states, faults and notes seen.
    const seen = [...events.filter((e) => e.type !== 'stats'), events.findLast((e) => e.type === 'stats')].map((e) => JSON.stringify(e));
    throw new Error(`${e.message}; events: ${seen.join('\n')}`);
  });
  const fault = events.find((e) => e.type === 'fault');
  const quiesced = events.find((e) => e.type === 'quiesced' && e.incarnation === 0);
  const threads = events.flatMap((e) => (e.type === 'thread' ? [e.threadId] : []));
  return { fault: fault?.type === 'fault' ? fault.fault : undefined, report: quiesced?.type === 'quiesced' ? quiesced.report : undefined, threads };
}

test('a driver that blocks its thread\'s loop is detected by the watchdog and taken back while its thread still runs, in order, then restarted in a new thread', async (t) => {
  const { host, events, records, state } = claim(t, { behave: 'block' }, { watchdogMs: 300, heartbeatMs: 50 });
  await until('incarnation 0 running', () => running(events, 0), 60_000);
  const mark = records.length;
  const { fault, report, threads } = await firstFault(events);
  t.is(fault?.kind, 'watchdog', fault?.message);
  t.regex(fault?.message ?? '', /no heartbeat from the driver thread .*it is hung/);
  t.deepEqual(records.slice(mark, mark + TAKE_BACK.length), TAKE_BACK);
  t.deepEqual(report, { threadRunning: true, busMaster: false, vectorsDisabled: 'msi', msiEnabled: false, msixEnabled: false, dmaMappingsLeft: 0 });
  t.is(threads.length, 2);
  t.not(threads[0], threads[1]);
  // The new incarnation maps its own memory: only that one is in the table.
  t.is(state().mappings, 1);
  await host.shutdown();
  t.is(state().mappings, 0);
});

test('a fault the driver reports through its bus (DriverBus.fault, from a bus timer) is a crash: taken back in order, its thread ended, restarted in a new thread', async (t) => {
  const { host, events, records, state } = claim(t, { behave: 'fault' }, { watchdogMs: 5000, heartbeatMs: 50 });
  const { fault, report, threads } = await firstFault(events);
  t.is(fault?.kind, 'crash', fault?.message);
  t.is(fault?.message, FAULT_MESSAGE);
  const takeBack = records.indexOf(TAKE_BACK[0]!);
  t.deepEqual(records.slice(takeBack, takeBack + TAKE_BACK.length), TAKE_BACK);
  t.like(report, { busMaster: false, vectorsDisabled: 'msi', dmaMappingsLeft: 0 });
  t.is(threads.length, 2);
  t.not(threads[0], threads[1], 'the restart runs in a new thread');
  t.is(state().mappings, 1);
  await host.shutdown();
  t.is(state().mappings, 0);
});

test('a leaking driver is taken back at the heap watermark, before V8\'s limit ends its thread', async (t) => {
  // The leak stops at 115 MiB of old generation, past the watermark (80% of 128 MiB: 102.4) and short of the limit
  // by more than one 4 MiB chunk, and holds it there. Its 64 KiB arrays fragment the heap: when the watermark was held against heapUsed, V8 ended the
  // thread (out of memory) with heapUsed at 98 MiB, below the watermark, in 3 runs of 11.
  const { events, records } = claim(t, { behave: 'leak', leakMb: 4, leakToMb: 115 }, { watchdogMs: 2000, heartbeatMs: 20, heapLimitMb: 128 });
  await until('incarnation 0 running', () => running(events, 0), 60_000);
  const mark = records.length;
  const { fault, report } = await firstFault(events);
  t.is(fault?.kind, 'watchdog', fault?.message);
  t.regex(fault?.message ?? '', /heap reached \d+ MiB of its 128 MiB limit .*leaking/);
  t.deepEqual(records.slice(mark, mark + TAKE_BACK.length), TAKE_BACK);
  t.true(report?.threadRunning, 'the thread was still there when the device was taken back');
  t.is(report?.dmaMappingsLeft, 0);
});

/** The faults and notes incarnation 0 got, by kind and message. */
const saidOf = (events: HostEvent[]) => events.flatMap((e) => (e.type === 'fault' ? [`fault ${e.fault.kind}: ${e.fault.message}`] : e.type === 'note' ? [`note: ${e.message}`] : []));

for (const how of ['promise', 'block', 'spin'] as const) {
  test(`an attach that never ends (${how}) is a fault naming the phase and attachTimeoutMs, once; the device is taken back in order and the driver restarted`, async (t) => {
    const { host, events, records } = claim(t, { hang: 'attach', hangHow: how }, { attachTimeoutMs: 1500 });
    const mark = records.length;
    const { fault, report } = await firstFault(events);
    t.regex(fault?.message ?? '', /attach did not finish within 1500 ms \(attachTimeoutMs\)/, saidOf(events).join('\n'));
    t.is(events.filter((e) => e.type === 'fault').length, 1, saidOf(events).join('\n'));
    t.is(events.filter((e) => e.type === 'quiesced' && e.incarnation === 0).length, 1, 'taken back once');
    t.deepEqual(records.slice(mark).filter((r) => r.startsWith(`${A} bus master off`) || r.includes('disableIrqs') || r.includes('dma unmap window')).slice(0, 3), TAKE_BACK);
    t.like(report, { threadRunning: true, busMaster: false, dmaMappingsLeft: 0 });
    await host.shutdown();
  });

  test(`a detach that never ends (${how}) is bounded: the release names the phase and its timeout, once; the device is taken back in order and shutdown ends`, async (t) => {
    // shutdownTimeoutMs far past the detach's bound: a shutdown forced on a busy host (5 s by default) would say nothing about the bound.
    const { host, events, records, state } = claim(t, { hang: 'detach', hangHow: how }, { attachTimeoutMs: 1500, shutdownTimeoutMs: 15_000 });
    await until('incarnation 0 running', () => running(events, 0), 60_000);
    const mark = records.length;
    const started = performance.now();
    const report = await within(1500 + 5000 + 10_000, host.shutdown(), 'the shutdown');
    const took = performance.now() - started;
    const said = saidOf(events).filter((m) => /detach/.test(m));
    t.log(`shutdown in ${Math.round(took)} ms; ${said.join('; ')}`);
    t.is(said.filter((m) => /detach did not finish within 1500 ms \(attachTimeoutMs\)/.test(m)).length, 1, said.join('\n'));
    // A thread that answered released the device itself (its own quiesce, unseen by this thread's port); one that did not was taken back from here.
    if (how !== 'promise') t.deepEqual(records.slice(mark).filter((r) => r.startsWith(`${A} bus master off`) || r.includes('disableIrqs') || r.includes('dma unmap window')).slice(0, 3), TAKE_BACK);
    t.false(report.forced, 'the bounded detach is part of the graceful release');
    t.is(state().mappings, 0);
    t.false(busMaster(state()));
  });
}

test('a shutdown that overruns shutdownTimeoutMs while a detach spins its thread: the devices are closed directly and the process ends at once, not when the detach bound would have', async (t) => {
  // attachTimeoutMs (the detach's bound) far beyond shutdownTimeoutMs: the forced release comes first.
  const child = spawn(process.execPath, [fileURLToPath(new URL('../fixtures/host-until-stopped.js', import.meta.url)),
    JSON.stringify({ hang: 'detach', hangHow: 'spin' }), JSON.stringify({ attachTimeoutMs: 30_000, shutdownTimeoutMs: 1000 })], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let stoppedAt: number | undefined;
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    stoppedAt ??= out.includes('\n') ? performance.now() : undefined;
  });
  const exitedAt = await within(60_000, new Promise<number>((resolve) => child.once('exit', () => resolve(performance.now()))), 'the host process to exit').finally(() => child.kill('SIGKILL'));
  t.like(JSON.parse(out), { forced: true, outcome: 'forced' });
  const lingered = exitedAt - stoppedAt!;
  t.log(`the process ended ${Math.round(lingered)} ms after its shutdown returned`);
  t.true(lingered < 3000, `the process lingered ${Math.round(lingered)} ms after the shutdown`);
});

test('a consumer of a service whose provider was given up is refused at once, with the reason, when it asks after', async (t) => {
  const { host, events } = claim(t, { behave: 'block', provides: true }, { watchdogMs: 300, heartbeatMs: 50, restart: { initialDelayMs: 10, maxDelayMs: 10, maxRestarts: 0 } });
  await until('incarnation 0 running', () => running(events, 0), 60_000);
  await until('released, given up', () => events.some((e) => e.type === 'released' && e.outcome.kind === 'gave-up'), 30_000);
  const asked = performance.now();
  const refusal = await t.throwsAsync(host.blockDevice('fix0n1', 60_000));
  t.true(performance.now() - asked < 2000, 'refused at once, not at the 60 s timeout');
  t.regex(refusal?.message ?? '', /block device "fix0n1": the device 0000:00:07\.0 that provided it was released: its driver was given up after 0 restart\(s\), the last watchdog fault: no heartbeat/);
});

test('a consumer waiting for a service that nothing can provide any more (every device released: an attach that cannot succeed) is refused then, not at its timeout', async (t) => {
  const { host, events } = claim(t, { hang: 'attach' }, { attachTimeoutMs: 500, restart: { initialDelayMs: 10, maxDelayMs: 10, maxRestarts: 0 } });
  const asked = performance.now();
  const waiting = host.blockDevice('never0n1', 60_000);
  const refusal = await t.throwsAsync(waiting);
  t.true(events.some((e) => e.type === 'released' && e.outcome.kind === 'gave-up'));
  t.true(performance.now() - asked < 30_000, `refused after ${Math.round(performance.now() - asked)} ms, not at the 60 s timeout`);
  t.regex(refusal?.message ?? '', /block device "never0n1": every device of this host has been released/);
});

test('an option the device cannot honour (an interrupt type it does not offer) is one fault naming the option, and the device is released, not restarted', async (t) => {
  const { events } = claim(t, { interrupt: 'msix' }, { restart: { initialDelayMs: 10, maxDelayMs: 10, maxRestarts: 5 } });
  await until('released', () => events.some((e) => e.type === 'released'), 60_000);
  const faults = events.flatMap((e) => (e.type === 'fault' ? [e.fault.message] : []));
  t.is(faults.length, 1, faults.join('\n'));
  t.regex(faults[0] ?? '', /^devices\[0\]\.options\.interrupt \("msix"\) is not what this device offers: 0000:00:07\.0 offers 0 msix vector\(s\); 1 requested/);
  t.false(events.some((e) => e.type === 'restart'), 'not restarted');
  t.like(events.find((e) => e.type === 'released'), { outcome: { kind: 'gave-up' } });
});
