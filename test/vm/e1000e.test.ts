/**
 * The e1000e driver against the guest kernel's own e1000e on the same QEMU
 * hub (no other netdev on it: every frame stays in the VM). The kernel's
 * NIC sits in a network namespace of its own; it speaks raw test frames
 * over AF_PACKET (vm/net/peer.c). The upci driver runs under DriverHost,
 * as `upci run` would run it (in a worker thread of its own), and is reached
 * through the host's packet port (DriverHost.packetPort: shared-memory rings
 * across the threads, frames by reference).
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { TapExport } from '../../exports/tap-export.js';
import type { LinkState } from '../../drivers/packet.js';
import { defaultDevices, guestAddress, hubPort } from '../../vm/bench.js';
import { monitorAvailable, monitorCommand } from '../../vm/monitor.js';
import { buildFrame, macBytes } from '../../vm/net/frames.js';
import { KernelPeer } from '../../vm/net/kernel-peer.js';
import { collect, sendSequence } from './net-traffic.js';
import { frameLengthTests, highRateTests, PACE, ping6, startNetDriver, tapReady, type NetDriver, type NetPair } from './net-suite.js';
import { sendOverTcp, tcpSinkScript } from '../../vm/net/tcp-transfer.js';
import { resetsAndCloses } from '../support/recording-port.js';
import { until } from '../support/bounded.js';

const nics = defaultDevices.filter((d) => d.model === 'e1000e');
const UPCI = nics.find((d) => d.bind === 'vfio-pci')!;
const KERNEL = nics.find((d) => d.bind === 'e1000e')!;
const UPCI_ADDRESS = guestAddress(UPCI);

let peer: KernelPeer;
test.before(async () => {
  peer = await KernelPeer.open(guestAddress(KERNEL));
});
test.after.always(() => peer?.close());

/** The e1000e driver under a DriverHost with these options, until its port is attached with the link up. */
const startDriver = (options: Record<string, unknown> = {}) => startNetDriver('e1000e', UPCI_ADDRESS, options);

let driver: NetDriver;
const pair: NetPair = { peer: () => peer, port: () => driver.port };

test.serial('attach: station address from RAL/RAH, PHY, link up, MSI-X with three vectors', async (t) => {
  driver = await startDriver({ rxRing: 4096, rxBuffers: 8192 });
  const info = driver.port.attached!;
  t.log(JSON.stringify(info), JSON.stringify(driver.port.linkState));
  t.regex(info.mac, /^52:54:00:12:34:[0-9a-f]{2}$/);
  t.not(info.mac, peer.mac);
  t.is(info.interrupt, 'msix');
  t.true(driver.port.linkState.up);
  t.is(driver.port.linkState.speedMbps, 1000);
  t.is(info.phyId.slice(0, 4), '0141', 'the 82574 PHY answers over MDIC');
  t.true(driver.events.some((e) => e.type === 'thread' && e.address === UPCI_ADDRESS), 'the driver runs in a worker thread of its own; the port is reached across threads');
});

frameLengthTests(pair);

highRateTests(pair);

/** Interrupts per MSI-X vector of the upci NIC, as the kernel counts them in /proc/interrupts. */
function procInterrupts(): number[] {
  const counts: number[] = [];
  for (const line of readFileSync('/proc/interrupts', 'utf8').split('\n')) {
    const m = /vfio-msix\[(\d+)\]\((.+?)\)/.exec(line);
    if (m === null || m[2] !== UPCI_ADDRESS) continue;
    const cells = line.trim().split(/\s+/).slice(1);
    counts[Number(m[1])] = cells.filter((c) => /^\d+$/.test(c)).reduce((a, c) => a + Number(c), 0);
  }
  return counts;
}

function vectorDeltas(before: { vectors: Record<string, number> }, procBefore: number[]) {
  const now = driver.port.stats().vectors;
  const proc = procInterrupts();
  return {
    driver: { rx: now.rx - before.vectors.rx!, tx: now.tx - before.vectors.tx!, other: now.other - before.vectors.other!, misrouted: now.misrouted - before.vectors.misrouted! },
    kernel: proc.map((n, i) => n - (procBefore[i] ?? 0)),
  };
}

const ROLES = ['rx', 'tx', 'other'] as const;

/** Until `role`'s vector fired, as the kernel counted it and as the driver saw it (its completions may trail the frames). */
async function firedOn(before: { vectors: Record<string, number> }, procBefore: number[], role: typeof ROLES[number]): Promise<void> {
  await until(`an interrupt on the ${role} vector`, () => {
    const d = vectorDeltas(before, procBefore);
    return d.driver[role] > 0 && d.kernel[ROLES.indexOf(role)]! > 0;
  }, 10_000).catch(() => undefined);
}

/** Interrupts arrived for `role` only: in the driver's per-vector counts and in the kernel's /proc/interrupts (vector = IVAR slot). */
function onlyOn(t: ExecutionContext, what: string, d: ReturnType<typeof vectorDeltas>, role: typeof ROLES[number]): void {
  t.log(what, JSON.stringify(d));
  t.is(d.driver.misrouted, 0, `${what}: no "other" event without an other cause`);
  ROLES.forEach((r, vector) => {
    if (r === role) {
      t.true(d.driver[r] > 0 && d.kernel[vector]! > 0, `${what}: vector ${vector} (${r}) fired`);
    } else {
      t.is(d.driver[r], 0, `${what}: no ${r} event`);
      t.is(d.kernel[vector], 0, `${what}: the kernel counted nothing on vector ${vector}`);
    }
  });
}

test.serial('MSI-X: receive, transmit and link events each on their own vector, nowhere else; link down/up from QEMU\'s monitor', async (t) => {
  if (!monitorAvailable()) return t.fail('the bench was booted without the monitor relay');
  const port = driver.port;
  // Receive only.
  let before = port.stats();
  let procBefore = procInterrupts();
  const c = collect(port, 300);
  await peer.send(port.attached!.mac, 300, 60, 60, PACE);
  await until('300 frames', () => c.check.received >= 300, 20_000);
  c.stop();
  await firedOn(before, procBefore, 'rx');
  onlyOn(t, 'receive only', vectorDeltas(before, procBefore), 'rx');

  // Transmit only.
  before = port.stats();
  procBefore = procInterrupts();
  const rx = peer.receive(300, 3000);
  await rx.ready;
  await sendSequence(port, peer.mac, 300, () => 60);
  t.is((await rx.result).received, 300);
  await firedOn(before, procBefore, 'tx');
  onlyOn(t, 'transmit only', vectorDeltas(before, procBefore), 'tx');

  // Link down and up.
  before = port.stats();
  procBefore = procInterrupts();
  const states: LinkState[] = [];
  const sub = port.link.subscribe((s) => states.push(s));
  const name = hubPort(UPCI);
  await monitorCommand(`set_link ${name} off`);
  await until('a link-down event', () => states.some((s) => !s.up), 10_000);
  // Bad input: sending while the link is down is a counted drop, not an error or a hang.
  const dropped = port.stats().tx.droppedLinkDown;
  t.is(port.send([buildFrame(new Uint8Array(60), macBytes(peer.mac), macBytes(port.attached!.mac), 0, 60)]), 1);
  t.is(port.stats().tx.droppedLinkDown, dropped + 1);
  await monitorCommand(`set_link ${name} on`);
  await until('a link-up event', () => states.at(-1)?.up === true, 20_000);
  sub.unsubscribe();
  t.log('link', JSON.stringify(states));
  const link = vectorDeltas(before, procBefore);
  onlyOn(t, 'link down and up', link, 'other');
  t.true(link.driver.other >= 2, 'one "other" interrupt per link change');

  // Traffic resumes.
  const again = peer.receive(200, 3000);
  await again.ready;
  await sendSequence(port, peer.mac, 200, (s) => 60 + s);
  t.like(await again.result, { received: 200, bad: 0, reordered: 0 });
});

test.serial('bad input: empty and oversize frames are refused with the problem named; nothing of the batch is queued; the NIC still sends', async (t) => {
  const port = driver.port;
  const good = buildFrame(new Uint8Array(100), macBytes(peer.mac), macBytes(port.attached!.mac), 0, 100);
  const before = port.stats().tx.frames;
  t.throws(() => port.send([good, new Uint8Array(0)]), { message: /frame 1 of the batch is empty/ });
  t.throws(() => port.send([good, new Uint8Array(1515)]), { message: /frame 1 of the batch is 1515 bytes, more than the 1514/ });
  t.is(port.stats().tx.frames, before, 'no frame of a refused batch was queued');
  const rx = peer.receive(50, 3000);
  await rx.ready;
  await sendSequence(port, peer.mac, 50, () => 1514);
  t.like(await rx.result, { received: 50, bad: 0, reordered: 0 });
});

test.serial('clean stop: bus mastering off before the device is given back, port detached', async (t) => {
  const mark = driver.records.length;
  await driver.stop();
  // The reset and the last close clear bus mastering themselves: it is read before each, fd still open.
  t.deepEqual(resetsAndCloses(driver.records.slice(mark), UPCI_ADDRESS), [`${UPCI_ADDRESS} reset (bus master off)`, `${UPCI_ADDRESS} close (bus master off)`]);
  t.is(driver.port.attached, undefined);
});

for (const interrupt of ['msi', 'intx', 'poll'] as const) {
  test.serial(`${interrupt}: 2,000 frames each way intact`, async (t) => {
    const d = await startDriver({ interrupt, rxRing: 4096, rxBuffers: 8192 });
    try {
      t.is(d.port.attached!.interrupt, interrupt);
      const rx = peer.receive(2000, 5000);
      await rx.ready;
      await sendSequence(d.port, peer.mac, 2000, (s) => 60 + (s % 1455));
      t.like(await rx.result, { received: 2000, bad: 0, duplicates: 0, reordered: 0 });
      const c = collect(d.port, 2000);
      await peer.send(d.port.attached!.mac, 2000, 60, 1514, PACE);
      await until('2,000 frames', () => c.check.received >= 2000, 30_000).catch(() => undefined);
      c.stop();
      t.like(c.check, { received: 2000, bad: 0, duplicates: 0, reordered: 0 });
    } finally {
      await d.stop();
    }
  });
}

test.serial('fault injection: the driver throws mid-traffic; after the supervised restart traffic resumes; every frame sent is received or counted lost', async (t) => {
  const d = await startDriver({ failAfterRxFrames: 500, rxRing: 4096, rxBuffers: 8192 });
  try {
    const port = d.port;
    const mac = port.attached!.mac;
    const total = 6000;
    const rx = peer.receive(total, 8000);
    await rx.ready;
    // upci → kernel throughout; the kernel → upci flow trips the fault.
    const c = collect(port, 1300);
    const sending = sendSequence(port, peer.mac, total, () => 64, 2000);
    const trip = await peer.send(mac, 1000, 60, 60, PACE);
    await sending;
    const r = await rx.result;
    await until('the restarted incarnation', () => port.attached?.incarnation === 1, 20_000);
    const s = port.stats();
    t.log(JSON.stringify(trip), JSON.stringify(r), JSON.stringify(s.tx), JSON.stringify(s.rx));
    t.log(d.events.filter((e) => e.type !== 'stats').map((e) => `${e.type} ${JSON.stringify(e)}`).join('\n'));
    t.true(d.events.some((e) => e.type === 'fault' && /failAfterRxFrames=500/.test(JSON.stringify(e))), 'the injected fault crashed the driver');
    t.true(d.events.some((e) => e.type === 'restart'));
    t.like(r, { bad: 0, duplicates: 0, reordered: 0 });
    t.is(r.received + s.tx.droppedNoDevice + s.tx.lostInRestart, total, 'every frame sent arrived or was counted as dropped or lost');
    // The restarted incarnation receives.
    c.stop();
    const after = collect(port, 300);
    await peer.send(mac, 300, 60, 60, PACE);
    await until('300 frames after the restart', () => after.check.received >= 300, 20_000).catch(() => undefined);
    after.stop();
    t.like(after.check, { received: 300, bad: 0, duplicates: 0, reordered: 0 });
  } finally {
    await d.stop();
  }
});

test.serial('TAP export: ping -6 to the kernel NIC\'s link-local address answers; 50 MB over TCP on link-local IPv6 arrive intact', async (t) => {
  const d = await startDriver({ rxRing: 4096, rxBuffers: 8192 });
  const pre = collect(d.port, 100);
  await peer.send(d.port.attached!.mac, 100, 60, 60, PACE);
  await until('100 frames before the TAP', () => pre.check.received >= 100, 10_000).catch(() => undefined);
  pre.stop();
  t.log('before the TAP', JSON.stringify(pre.check));
  t.like(pre.check, { received: 100, bad: 0, duplicates: 0, reordered: 0 }, 'kernel → upci before the TAP: each frame once, intact, in order');
  // A second unicast address (receive address entry 1) is accepted while it is added, and only then.
  const EXTRA = [0x02, 0x00, 0x00, 0x00, 0x00, 0x2a] as const;
  const filtered = async (when: string) => {
    // 20 frames to the address, then the same 20 sequence numbers to the NIC's own: on one hub, in
    // order, so once the second 20 came the first went by; any of them received is a duplicate.
    const c = collect(d.port, 20);
    await peer.send('02:00:00:00:00:2a', 20, 60, 60, PACE);
    await peer.send(d.port.attached!.mac, 20, 60, 60, PACE);
    await until(`20 frames to the NIC's own address ${when}`, () => c.check.received >= 20, 10_000).catch(() => undefined);
    c.stop();
    t.like(c.check, { received: 20, bad: 0, duplicates: 0 }, `${when}: frames to 02:00:00:00:00:2a are filtered out, the NIC's own arrive`);
  };
  await filtered('before the address is added');
  const extra = collect(d.port, 20);
  d.port.addUnicast(EXTRA);
  await peer.send('02:00:00:00:00:2a', 20, 60, 60, PACE);
  await until('20 frames to the extra address', () => extra.check.received >= 20, 10_000).catch(() => undefined);
  extra.stop();
  d.port.removeUnicast(EXTRA);
  t.like(extra.check, { received: 20, bad: 0, duplicates: 0, reordered: 0 }, 'frames to the second unicast address are received');
  await filtered('after the address is removed');
  const tap = TapExport.open(d.port, 'upci0');
  const server = peer.spawn(process.execPath, ...tcpSinkScript());
  try {
    const { target, first } = await tapReady(tap, peer);
    t.log('first answer:', first);
    const ping = await ping6(tap, target, ['-c', '3', '-W', '10']);
    if (!/3 packets received/.test(ping)) {
      // Which way fails: the kernel pings the TAP; then plain frames kernel -> upci.
      const back = await peer.run('busybox', 'ping6', '-c', '2', '-W', '5', `${execFileSync('ip', ['-6', '-o', 'addr', 'show', 'dev', tap.name, 'scope', 'link'], { encoding: 'utf8' }).match(/fe80::[0-9a-f:]+/)![0]}%${peer.ifname}`).catch((e: Error) => e.message);
      t.log('kernel -> tap ping', back, 'tap', JSON.stringify(tap.counters), 'rx', JSON.stringify(d.port.stats().rx), JSON.stringify(d.port.stats().hardware));
      t.log(await peer.run('ip', '-s', 'link', 'show', 'dev', peer.ifname).catch((e: Error) => e.message));
    }
    t.log(ping.trim().split('\n').slice(-2).join(' / '));
    t.regex(ping, /3 packets transmitted, 3 packets received/);

    const lines = createInterface({ input: server.stdout! });
    const serverOutput: string[] = [];
    lines.on('line', (l) => serverOutput.push(l));
    await until('the TCP sink to listen', () => serverOutput.includes('listening'), 30_000);
    const total = 50 * 1024 * 1024;
    const t0 = performance.now();
    const expected = await sendOverTcp(`${target}%${tap.name}`, total);
    await until('the sink\'s digest', () => serverOutput.some((l) => l.startsWith('{')), 120_000);
    const seconds = (performance.now() - t0) / 1000;
    const result = JSON.parse(serverOutput.find((l) => l.startsWith('{'))!) as { bytes: number; sha256: string };
    t.log(`${(total / seconds / 1e6).toFixed(1)} MB/s`, JSON.stringify(tap.counters), JSON.stringify(d.port.stats().rx), JSON.stringify(d.port.stats().tx));
    t.is(result.bytes, total);
    t.is(result.sha256, expected);
  } finally {
    t.log('unicast', JSON.stringify(d.port.unicast), 'tap', JSON.stringify(tap.counters), 'port', JSON.stringify(d.port.stats()), 'events', JSON.stringify(d.events.filter((e) => e.type === 'fault')));
    t.log(execFileSync('ip', ['-6', 'neigh', 'show'], { encoding: 'utf8' }), await peer.run('ip', '-6', 'neigh', 'show').catch((e: Error) => e.message));
    t.log(readFileSync('/proc/net/dev_mcast', 'utf8'));
    server.kill();
    tap.close();
    await d.stop();
  }
});
