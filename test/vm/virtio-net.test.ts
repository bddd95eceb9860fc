/**
 * The virtio-net driver in the VM, on QEMU's virtio-net-pci (modern only,
 * iommu_platform=on, behind the emulated VT-d; vm/bench.ts: 0e.0), against
 * the identical NIC at 0f.0 driven by the guest kernel's virtio_net on the
 * same QEMU hub (no other netdev on it: every frame stays in the VM). The
 * kernel's NIC sits in a network namespace of its own and speaks raw test
 * frames over AF_PACKET (vm/net/peer.c). The upci driver runs in a thread
 * of its own under DriverHost, reached through the host's packet port.
 * Raw Ethernet frames and IPv6 link-local only.
 */
import test from 'ava';
import type { LinkState } from '../../drivers/packet.js';
import { TapExport } from '../../exports/tap-export.js';
import { defaultDevices, findProjectRoot, guestAddress, hubPort } from '../../vm/bench.js';
import { kernelVirtioNet } from '../../vm/benchmarks/kernel-drivers.js';
import { monitorAvailable, monitorCommand } from '../../vm/monitor.js';
import { KernelPeer } from '../../vm/net/kernel-peer.js';
import { resetsAndCloses } from '../support/recording-port.js';
import { until } from '../support/bounded.js';
import { sysfsBusMaster } from './devices.js';
import { frameLengthTests, highRateTests, PACE, ping6, startNetDriver, tapReady, type NetDriver, type NetPair } from './net-suite.js';
import { collect, sendSequence } from './net-traffic.js';

const nics = defaultDevices.filter((d) => d.model === 'virtio-net-pci');
const UPCI = nics.find((d) => d.bind === 'vfio-pci')!;
const KERNEL = nics.find((d) => d.bind === undefined)!;
const UPCI_ADDRESS = guestAddress(UPCI);
/** Receive buffers well beyond the queue (QEMU's is 256), so a consumer holding frames never runs it dry. */
const OPTIONS = { rxBuffers: 8192 };

const startDriver = (options: Record<string, unknown> = {}) => startNetDriver('virtio-net', UPCI_ADDRESS, { ...OPTIONS, ...options });

let peer: KernelPeer;
test.before(async () => {
  // virtio_pci holds the partner since boot; virtio_net, from the kernel package, gives it an interface.
  await kernelVirtioNet(findProjectRoot(), KERNEL);
  peer = await KernelPeer.open(guestAddress(KERNEL));
});
test.after.always(() => peer?.close());

let driver: NetDriver;
const pair: NetPair = { peer: () => peer, port: () => driver.port };

test.serial('attach: station address from the device configuration, link up from its status, MSI-X, in a thread of its own', async (t) => {
  driver = await startDriver();
  const info = driver.port.attached!;
  t.log(JSON.stringify(info), JSON.stringify(driver.port.linkState));
  t.log(driver.events.filter((e) => e.type === 'note').map((e) => JSON.stringify(e)).join('\n'));
  t.regex(info.mac, /^52:54:00:12:34:[0-9a-f]{2}$/);
  t.not(info.mac, peer.mac);
  t.like(info, { interrupt: 'msix', rxRing: 256, txRing: 256, macSource: 'device configuration' });
  t.true(driver.port.linkState.up);
  t.true(driver.events.some((e) => e.type === 'thread' && e.address === UPCI_ADDRESS), 'the driver runs in a worker thread of its own; the port is reached across threads');
});

frameLengthTests(pair);

highRateTests(pair);

test.serial('link down and up from QEMU\'s monitor reach the port (config change vector); traffic resumes', async (t) => {
  if (!monitorAvailable()) return t.fail('the bench was booted without the monitor relay');
  const port = driver.port;
  const other = port.stats().vectors.other;
  const states: LinkState[] = [];
  const sub = port.link.subscribe((s) => states.push(s));
  try {
    await monitorCommand(`set_link ${hubPort(UPCI)} off`);
    await until('a link-down event', () => states.some((s) => !s.up), 10_000);
  } finally {
    // Whatever happened, the link comes back for the tests after this one.
    await monitorCommand(`set_link ${hubPort(UPCI)} on`);
  }
  await until('a link-up event', () => states.at(-1)?.up === true && states.some((s) => !s.up), 20_000);
  sub.unsubscribe();
  t.log('link', JSON.stringify(states));
  t.true(port.stats().vectors.other - other >= 2, 'one config-change interrupt per link change');
  const rx = peer.receive(200, 3000);
  await rx.ready;
  await sendSequence(port, peer.mac, 200, (s) => 60 + s);
  t.like(await rx.result, { received: 200, bad: 0, reordered: 0 });
});

test.serial('clean stop: the device reset at detach, bus mastering off before it is given back, port detached', async (t) => {
  const mark = driver.records.length;
  await driver.stop();
  t.false(driver.events.some((e) => e.type === 'note' && /detach failed|did not finish/.test(e.message)), 'the reset at detach completed');
  t.deepEqual(resetsAndCloses(driver.records.slice(mark), UPCI_ADDRESS).at(-1), `${UPCI_ADDRESS} close (bus master off)`);
  t.false(sysfsBusMaster(UPCI_ADDRESS));
  t.is(driver.port.attached, undefined);
});

test.serial('fault injection: the driver throws mid-traffic; it is quiesced (bus mastering off from sysfs, no DMA mapping left) and restarted; traffic resumes both ways', async (t) => {
  const d = await startDriver({ failAfterRxFrames: 500 });
  try {
    const port = d.port;
    const mac = port.attached!.mac;
    const total = 4000;
    const rx = peer.receive(total, 8000);
    await rx.ready;
    // upci → kernel throughout; the kernel → upci flow trips the fault.
    const sending = sendSequence(port, peer.mac, total, () => 64, 2000);
    const trip = await peer.send(mac, 1000, 60, 60, PACE);
    await sending;
    const r = await rx.result;
    await until('the restarted incarnation', () => port.attached?.incarnation === 1, 60_000);
    const s = port.stats();
    t.log(JSON.stringify(trip), JSON.stringify(r), JSON.stringify(s.tx), JSON.stringify(s.rx));
    t.log(d.events.filter((e) => e.type !== 'stats').map((e) => `${e.type} ${JSON.stringify(e)}`).join('\n'));
    t.true(d.events.some((e) => e.type === 'fault' && /failAfterRxFrames=500/.test(JSON.stringify(e))), 'the injected fault crashed the driver');
    t.like(d.events.find((e) => e.type === 'quiesced' && e.incarnation === 0), { report: { busMaster: false, dmaMappingsLeft: 0 } }, 'the faulted incarnation was taken back: bus mastering off, no DMA mapping left');
    t.regex(resetsAndCloses(d.records, UPCI_ADDRESS)[0] ?? 'nothing', / \(bus master off\)$/, 'bus mastering read off from sysfs before the device was reset or closed');
    t.like(r, { bad: 0, duplicates: 0, reordered: 0 });
    t.is(r.received + s.tx.droppedNoDevice + s.tx.lostInRestart, total, 'every frame sent arrived or was counted as dropped or lost');
    // The restarted incarnation carries traffic both ways.
    const after = collect(port, 300);
    await peer.send(mac, 300, 60, 60, PACE);
    await until('300 frames after the restart', () => after.check.received >= 300, 20_000).catch(() => undefined);
    after.stop();
    t.like(after.check, { received: 300, bad: 0, duplicates: 0, reordered: 0 });
    const out = peer.receive(300, 3000);
    await out.ready;
    await sendSequence(port, peer.mac, 300, (seq) => 60 + seq);
    t.like(await out.result, { received: 300, bad: 0, duplicates: 0, reordered: 0 });
  } finally {
    await d.stop();
  }
});

test.serial('TAP export: ping -6 to the kernel NIC\'s link-local address answers', async (t) => {
  const d = await startDriver();
  const tap = TapExport.open(d.port, 'upci1');
  try {
    const { target, first } = await tapReady(tap, peer);
    t.log('first answer:', first);
    const ping = await ping6(tap, target, ['-c', '3', '-W', '10']);
    t.log(ping.trim().split('\n').slice(-2).join(' / '), 'tap', JSON.stringify(tap.counters), 'port', JSON.stringify(d.port.stats()));
    t.regex(ping, /3 packets transmitted, 3 packets received/);
  } finally {
    tap.close();
    await d.stop();
  }
});
