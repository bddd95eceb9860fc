/**
 * The device set changing while the host runs (issue 23), in the guest.
 *
 * Hot-plug: the bench's edu and nvme behind hot-plug capable pcie-root-ports are claimed by match entries ("slot",
 * as the guest names the ports' slots), unplugged with QEMU's `device_del` while the nvme is read by a BlockDevice consumer and the
 * edu raises MSIs, and plugged again with `device_add`: the guest kernel completes each removal within
 * REMOVAL_BOUND_MS, the consumer's pending reads fail with BlockGoneError, edu2 (an address entry) raises INTx in
 * every 2 s window throughout, and each device that comes back is bound to vfio-pci by the host (its entry has
 * "bind": true; a new function has no driver_override), claimed for its entry, its driver attached, and used.
 *
 * Reload: `upci run` gets SIGHUP with a config that adds, removes, changes and keeps one entry each: exactly those
 * claims, releases and restarts, and the kept edu's interrupt count grows in every stats interval; then a broken
 * config: one line on stderr, and nothing changes.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { basename, join } from 'node:path';
import type { HostEvent } from '../../actors/events.js';
import { BlockGoneError } from '../../drivers/block.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { LinuxDeviceWatcher } from '../../pci/device-watcher.js';
import { monitorAvailable, monitorCommand } from '../../vm/monitor.js';
import { bench } from './devices.js';
import { run } from './host-run.js';

const EDU = parsePciAddress(bench.edu);
const EDU2 = parsePciAddress(bench.edu2);
const TESTDEV = parsePciAddress(bench.testdev);
const HP_EDU = parsePciAddress(bench.hotplugEdu);
const HP_NVME = parsePciAddress(bench.hotplugNvme);
const PAIR_EDU = parsePciAddress(bench.eduPairInOneGroup[0]);

/**
 * From device_del to the function gone from the guest's sysfs: the guest's hot-plug driver (acpiphp on this q35;
 * pciehp, with a native port, waits 5 s after the attention button) removes the function, which waits for
 * vfio-pci's device request to be answered.
 */
const REMOVAL_BOUND_MS = 15_000;
/** edu2 raises one INTx every 20 ms: no window this long may go without one. */
const WINDOW_MS = 2000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const driverOf = (address: string): string | undefined => {
  const link = `/sys/bus/pci/devices/${address}/driver`;
  return existsSync(link) ? basename(readlinkSync(link)) : undefined;
};

interface BenchDevice { readonly address: string; readonly hotplugId?: string; readonly qdev?: string }
const qdevOf = (address: string): { id: string; line: string } => {
  const devices = JSON.parse(readFileSync(join(process.env.UPCI_VM_OUT ?? '/tmp/upci-out', 'devices.json'), 'utf8')) as BenchDevice[];
  const d = devices.find((x) => x.address === address);
  if (d?.hotplugId === undefined || d.qdev === undefined) throw new Error(`${address} is no hot-pluggable bench device`);
  return { id: d.hotplugId, line: d.qdev };
};

/** The guest's hot-plug slots: name and the bus:device behind it (what the kernel's hot-plug driver registered). */
const slots = (): { name: string; address: string }[] => (existsSync('/sys/bus/pci/slots') ? readdirSync('/sys/bus/pci/slots') : [])
  .map((name) => ({ name, address: existsSync(`/sys/bus/pci/slots/${name}/address`) ? readFileSync(`/sys/bus/pci/slots/${name}/address`, 'utf8').trim() : '' }));

async function waitFor(what: string, predicate: () => boolean, ms: number): Promise<number> {
  const started = Date.now();
  while (!predicate()) {
    if (Date.now() - started > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
  return Date.now() - started;
}

/** Asserts that `counts` (sampled every 100 ms) grew in every window of `windowMs`. */
function neverPaused(t: { true(v: boolean, m: string): void }, samples: { at: number; count: number }[], windowMs: number, what: string): void {
  for (const s of samples) {
    const later = samples.find((x) => x.at - s.at >= windowMs);
    if (later === undefined) break;
    t.true(later.count > s.count, `${what} did not grow between +${s.at - samples[0]!.at} ms and +${later.at - samples[0]!.at} ms`);
  }
}

test.serial(`device_del of a held nvme under reads and of an edu raising MSIs: removed within ${REMOVAL_BOUND_MS} ms, reads fail gone, edu2 never stops; device_add: claimed again by their match entries and used`, async (t) => {
  if (!monitorAvailable()) return t.fail('this guest has no monitor relay');
  t.is(driverOf(HP_EDU), 'vfio-pci');
  t.is(driverOf(HP_NVME), 'vfio-pci');
  // The slot names are the guest kernel's (by ACPI here: "0-3" and "0-4" were seen), read where it lists them.
  const slotOf = (address: string) => slots().find((s) => s.address === address.slice(0, -2))?.name;
  const eduSlot = slotOf(HP_EDU);
  const nvmeSlot = slotOf(HP_NVME);
  t.log(`slots: edu ${eduSlot}, nvme ${nvmeSlot}`);
  if (eduSlot === undefined || nvmeSlot === undefined) return t.fail(`no hot-plug slot for the bench's pcie-root-ports: ${slots().map((x) => `${x.name}=${x.address}`).join(' ')}`);
  const watcher = LinuxDeviceWatcher.open();
  const r = run(t, {
    statsIntervalMs: 500,
    devices: [
      { address: EDU2, driver: 'edu', options: { interrupt: 'intx', raiseIntervalMs: 20 } },
      { match: { vendor: '1234', device: '11e8', slot: eduSlot }, driver: 'edu', bind: true, options: { interrupt: 'msi', raiseIntervalMs: 5 } },
      { match: { class: '0108', slot: nvmeSlot }, name: 'hpnvme', driver: 'nvme', bind: true },
    ],
  }, { watcher });
  const runningCount = (a: string) => r.events.filter((x) => x.type === 'state' && x.address === a && x.state === 'running').length;
  await r.until('all running', () => runningCount(EDU2) === 1 && runningCount(HP_EDU) === 1 && runningCount(HP_NVME) === 1, 240_000);
  await r.until('interrupts on both edus', () => r.host.interruptCount(EDU2) > 10 && r.host.interruptCount(HP_EDU) > 10);

  // The consumer: reads kept in flight on the hot-plugged nvme until they fail.
  const disk = await r.host.blockDevice('hpnvmen1', 60_000);
  let completed = 0;
  const failures: unknown[] = [];
  const reader = async () => {
    for (let lba = 0; failures.length === 0; lba = (lba + 8) % 4096) {
      try {
        await disk.read(lba, 8);
        completed++;
      } catch (e) {
        failures.push(e);
      }
    }
  };
  const readers = [reader(), reader(), reader(), reader()];
  await r.until('reads completing', () => completed > 20);

  const samples: { at: number; count: number }[] = [];
  const sample = () => samples.push({ at: Date.now(), count: r.host.interruptCount(EDU2) });
  sample();
  const sampler = setInterval(sample, 100);

  // Unplug the nvme under reads, then the edu under MSIs.
  const nvme = qdevOf(HP_NVME);
  const edu = qdevOf(HP_EDU);
  t.log(`device_del ${nvme.id}: ${await monitorCommand(`device_del ${nvme.id}`)}`);
  const nvmeGoneMs = await waitFor(`${HP_NVME} gone from sysfs`, () => !existsSync(`/sys/bus/pci/devices/${HP_NVME}`), REMOVAL_BOUND_MS);
  t.log(`device_del ${edu.id}: ${await monitorCommand(`device_del ${edu.id}`)}`);
  const eduGoneMs = await waitFor(`${HP_EDU} gone from sysfs`, () => !existsSync(`/sys/bus/pci/devices/${HP_EDU}`), REMOVAL_BOUND_MS);
  t.log(`removal completed in the guest: nvme ${nvmeGoneMs} ms, edu ${eduGoneMs} ms (bound ${REMOVAL_BOUND_MS} ms); ${completed} reads completed before`);

  await waitFor('the pending reads to fail', () => failures.length > 0, 60_000);
  await Promise.race([Promise.all(readers), sleep(60_000).then(() => { throw new Error('a read never settled after the removal'); })]);
  t.true(failures.length > 0 && failures.every((e) => e instanceof BlockGoneError), `the pending reads failed gone: ${failures.map(String).join('; ')}`);
  for (const a of [HP_NVME, HP_EDU]) {
    t.like(r.events.find((e) => e.type === 'removed' && e.address === a), { address: a, incarnation: 0 });
    t.like(r.events.find((e) => e.type === 'released' && e.address === a), { outcome: { kind: 'removed' } });
  }

  // Plug both again: bound to vfio-pci by the host, claimed, attached.
  t.log(`device_add ${edu.line}: ${await monitorCommand(`device_add ${edu.line}`)}`);
  t.log(`device_add ${nvme.line}: ${await monitorCommand(`device_add ${nvme.line}`)}`);
  await r.until('both running again', () => runningCount(HP_EDU) === 2 && runningCount(HP_NVME) === 2, 240_000);
  clearInterval(sampler);
  sample();
  neverPaused(t, samples, WINDOW_MS, 'edu2\'s interrupt count');
  t.is(driverOf(HP_EDU), 'vfio-pci');
  t.is(driverOf(HP_NVME), 'vfio-pci');
  const eduAgain = r.host.interruptCount(HP_EDU);
  await r.until('the new edu raising interrupts', () => r.host.interruptCount(HP_EDU) > eduAgain + 10);
  const again = await r.host.blockDevice('hpnvmen1', 60_000);
  t.not(again, disk, 'a new device object for the new incarnation');
  const data = new Uint8Array(4096).map((_, i) => (i * 7) & 0xff);
  await again.write(64, data);
  t.deepEqual(await again.read(64, 4096 / again.blockSize), data, 'I/O works on the device plugged again');

  t.false(r.events.some((e) => e.type === 'fault'), 'no fault anywhere');
  t.deepEqual(r.events.flatMap((e) => (e.type === 'state' && e.address === EDU2 ? [e.state] : [])), ['claimed', 'attaching', 'running'], 'edu2 never left running');
  const report = await r.host.shutdown();
  t.false(report.forced);
  t.deepEqual(report.devices.map((d) => [d.address, d.outcome.kind]).sort(), [
    [EDU2, 'stopped'], [HP_EDU, 'removed'], [HP_EDU, 'stopped'], [HP_NVME, 'removed'], [HP_NVME, 'stopped'],
  ].sort());
});

/** `upci run` of `file` with its event socket; the events as they come, and its stdout and stderr. */
async function upciRun(file: string, socket: string): Promise<{ child: ChildProcess; events: HostEvent[]; out: () => string; err: () => string }> {
  const child = spawn(process.execPath, ['dist/bin/upci.js', 'run', file, '--events', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  await waitFor('the event socket', () => existsSync(socket) || child.exitCode !== null, 60_000);
  if (child.exitCode !== null) throw new Error(`upci run exited ${child.exitCode}: ${err}`);
  const events: HostEvent[] = [];
  const conn = connect(socket);
  let buffered = '';
  conn.on('data', (d: Buffer) => {
    buffered += d.toString();
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      const value = JSON.parse(buffered.slice(0, nl)) as HostEvent | { type: 'snapshot'; events: HostEvent[] };
      buffered = buffered.slice(nl + 1);
      if (value.type === 'snapshot') events.push(...(value as { events: HostEvent[] }).events);
      else events.push(value as HostEvent);
    }
  });
  conn.on('error', () => undefined);
  return { child, events, out: () => out, err: () => err };
}

test.serial('SIGHUP: an added, a removed, a changed and an unchanged entry give exactly one claim, one release, one restart, and the unchanged edu never pauses; a broken config changes nothing', async (t) => {
  const dir = mkdtempSync('/tmp/upci-reload-');
  const file = join(dir, 'config.json');
  const kept = { address: EDU, driver: 'edu', options: { interrupt: 'msi', raiseIntervalMs: 5 } };
  writeFileSync(file, JSON.stringify({
    statsIntervalMs: 250,
    devices: [kept, { address: EDU2, driver: 'edu', options: { interrupt: 'intx' } }, { address: TESTDEV, driver: 'pci-testdev', options: { checkIntervalMs: 100 } }],
  }));
  const host = await upciRun(file, join(dir, 'events.sock'));
  t.teardown(() => {
    if (host.child.exitCode === null) host.child.kill('SIGKILL');
  });
  // A connection's first line is a snapshot (each device's latest state), so states are compared from a mark on.
  const states = (a: string, from = 0) => host.events.slice(from).flatMap((e) => (e.type === 'state' && e.address === a ? [e.state] : []));
  const stats = (a: string) => host.events.flatMap((e) => (e.type === 'stats' && e.address === a ? [e] : []));
  await waitFor('three running', () => [EDU, EDU2, TESTDEV].every((a) => states(a).includes('running')), 240_000);
  await waitFor('edu interrupts', () => (stats(EDU).at(-1)?.interrupts ?? 0) > 10, 60_000);

  // Reload: EDU kept (moved to the end), EDU2 removed, TESTDEV changed, PAIR_EDU added.
  writeFileSync(file, JSON.stringify({
    statsIntervalMs: 250,
    devices: [{ address: TESTDEV, driver: 'pci-testdev', options: { checkIntervalMs: 200 } }, { address: PAIR_EDU, driver: 'edu', options: { interrupt: 'intx' } }, kept],
  }));
  const reloadAt = Date.now();
  const mark = host.events.length;
  host.child.kill('SIGHUP');
  await waitFor('the reload', () => host.events.some((e) => e.type === 'host' && (e.phase === 'reloaded' || e.phase === 'reload-refused')), 30_000);
  t.like(host.events.find((e) => e.type === 'host' && (e.phase === 'reloaded' || e.phase === 'reload-refused')), {
    phase: 'reloaded', detail: `claimed ${PAIR_EDU}; released ${EDU2}; restarted ${TESTDEV}`,
  });
  await waitFor('the added and the changed running', () => states(PAIR_EDU, mark).includes('running') && states(TESTDEV, mark).includes('running'), 240_000);
  t.log(`reload done in ${Date.now() - reloadAt} ms`);
  t.deepEqual(states(EDU, mark), [], 'the unchanged edu untouched');
  t.deepEqual(states(EDU2, mark), ['detaching', 'released'], 'the removed one released');
  t.deepEqual(states(TESTDEV, mark), ['detaching', 'released', 'claimed', 'attaching', 'running'], 'the changed one restarted');
  t.deepEqual(states(PAIR_EDU, mark), ['claimed', 'attaching', 'running'], 'the added one claimed');
  // The kept edu's count (MSIs every 5 ms, stats every 250 ms) grew in every 2 s window from just before the SIGHUP to now.
  const during = host.events.slice(mark - 1).flatMap((e) => (e.type === 'stats' && e.address === EDU ? [{ at: e.at, count: e.interrupts }] : []));
  t.true(during.length > 8, `${during.length} stats events during the reload`);
  neverPaused(t, during, WINDOW_MS, 'the kept edu\'s interrupt count');

  // A broken config: refused in one line, nothing changes.
  writeFileSync(file, JSON.stringify({ devices: [kept, { address: PAIR_EDU, driver: 'edu', options: { interrupt: 'sometimes' } }] }));
  // What would be a change: a state, a release, a fault, the host's own events (notes, such as an edu's self-test, are not).
  const changes = () => host.events.filter((e) => e.type === 'state' || e.type === 'released' || e.type === 'fault' || e.type === 'restart' || e.type === 'host');
  const changesBefore = changes().length;
  host.child.kill('SIGHUP');
  await waitFor('the refusal', () => /reload refused/.test(host.err()), 30_000);
  await sleep(3000);
  t.log(host.err());
  t.regex(host.err(), /^upci run: reload refused, nothing changed: devices\[1\]\.options\.interrupt: .*sometimes.*$/m);
  t.is(host.err().trim().split('\n').filter((l) => /reload refused/.test(l)).length, 1, 'one line');
  t.deepEqual(changes().slice(changesBefore).map((e) => (e.type === 'host' ? e.phase : e.type)), ['reload-refused'], 'nothing but the refusal');

  host.child.kill('SIGINT');
  const code = await new Promise<number | null>((resolve) => (host.child.exitCode !== null ? resolve(host.child.exitCode) : host.child.on('exit', resolve)));
  t.is(code, 0, host.err());
});
