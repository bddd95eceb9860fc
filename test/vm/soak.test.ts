/**
 * A 60 s soak (issue 13): every device of the bench that upci drives, in one
 * host process, each driver in a thread of its own, under load: edu raising
 * MSIs and a second edu raising INTx back to back (each raise waits for its
 * interrupt), pci-testdev checking its port counter, an NVMe namespace
 * written and read back by four loops in this thread through the block
 * API's shared-memory rings, and the e1000e carrying numbered frames both
 * ways through the packet API's rings to and from the guest kernel's own
 * e1000e on the same QEMU hub. Nothing may be lost (a lost interrupt would
 * stop that edu for good: sampled every 100 ms from a thread of its own,
 * neither count may stand still for over 1 s while that thread ran; every
 * read returns what was written; every frame arrives) or duplicated (each
 * edu's own accounting, noted at the stop, against what the host delivered:
 * a second delivery of a serviced interrupt finds edu's status clear and is
 * refused as not ours, and nothing else may be refused; no frame twice or
 * out of order), and each thread's heap is reported.
 */
import test from 'ava';
import type { HostEvent } from '../../actors/events.js';
import type { ThreadStats } from '../../actors/meter.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { allocShared } from '../../shm/mapping.js';
import { defaultDevices, guestAddress } from '../../vm/bench.js';
import { KernelPeer, type ReceiveResult } from '../../vm/net/kernel-peer.js';
import type { SequenceCheck } from '../../vm/net/frames.js';
import { until } from '../support/bounded.js';
import { bench } from './devices.js';
import { run } from './host-run.js';
import { collect, sendSequence } from './net-traffic.js';
import { progressSampler } from './sampling.js';

const SOAK_MS = 60_000;
const SAMPLE_MS = 100;
/**
 * The longest a flat-out edu may go without an interrupt beyond the sampler thread's own longest
 * interval (the guest's vCPUs are shared by four busy threads; a starved guest starves the
 * sampler too, and that time is not the driver's).
 */
const MAX_GAP_MS = 1_000;
/**
 * Events refused as not ours (edu's interrupt status read 0) that edu can legitimately cause:
 * none, with either type. An MSI is sent only by a raise, one per raise. An INTx event is
 * signalled by vfio-pci only while edu asserts its line (edu has the INTx status/disable
 * bits: vfio checks the status bit, and at the unmask re-signals only a line still
 * asserted, which the driver has cleared before it acks). So each refusal is a delivery of
 * an interrupt already serviced: a duplicate.
 */
const NOT_OURS = { msi: 0, intx: 0 } as const;
const EDU_TYPES = ['msi', 'intx'] as const;

const EDU = parsePciAddress(bench.edu);
const EDU2 = parsePciAddress(bench.edu2);
const TESTDEV = parsePciAddress(bench.testdev);
const NVME = parsePciAddress(bench.nvme);
const NIC = parsePciAddress(bench.e1000e);
const KERNEL_NIC = guestAddress(defaultDevices.find((d) => d.model === 'e1000e' && d.bind === 'e1000e')!);
const EDUS = [EDU, EDU2] as const;
const ALL = [EDU, EDU2, TESTDEV, NVME, NIC] as const;
/** NVMe load: loops writing and reading back requests of this many bytes, each in a region of its own. */
const IO_LOOPS = 4;
const IO_BYTES = 64 * 1024;
/** The longest the NVMe load may go without a completed round trip. */
const MAX_IO_GAP_MS = 5_000;
/** Network load: rounds of this many frames each way, at this rate (a load beside the others, not a rate search). */
const NET_ROUND = 2000;
const NET_PER_SECOND = 400;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const running = (address: string) => (events: HostEvent[]) => events.some((e) => e.type === 'state' && e.address === address && e.state === 'running');

interface Counted { received: number; bad: number; duplicates: number; reordered: number }
const add = (total: Counted, r: Counted) => {
  total.received += r.received;
  total.bad += r.bad;
  total.duplicates += r.duplicates;
  total.reordered += r.reordered;
};

test(`edu (MSI), edu (INTx), pci-testdev, nvme and e1000e in one process, each driver in its own thread, ${SOAK_MS / 1000} s under load: nothing lost or duplicated, each thread's heap reported`, async (t) => {
  t.timeout(SOAK_MS + 300_000);
  const peer = await KernelPeer.open(KERNEL_NIC);
  t.teardown(() => peer.close());
  const r = run(t, {
    statsIntervalMs: 1000,
    devices: [
      { address: EDU, driver: 'edu', options: { interrupt: EDU_TYPES[0], raiseIntervalMs: 0 } },
      { address: EDU2, driver: 'edu', options: { interrupt: EDU_TYPES[1], raiseIntervalMs: 0 } },
      { address: TESTDEV, driver: 'pci-testdev', options: { checkIntervalMs: 100 } },
      { address: NVME, name: 'soak', driver: 'nvme', options: { ioQueues: 1, queueDepth: 16 } },
      { address: NIC, name: 'nic', driver: 'e1000e', options: { rxRing: 1024, rxBuffers: 2048 } },
    ],
  });
  const sampler = progressSampler();
  await r.until('every driver running', (e) => ALL.every((a) => running(a)(e)), 180_000);
  await r.until('both edus past their self-tests', (e) => EDUS.every((a) => e.some((x) => x.type === 'note' && x.address === a && /self-test passed/.test(x.message))));

  const threads = r.events.filter((e): e is Extract<HostEvent, { type: 'thread' }> => e.type === 'thread');
  t.deepEqual(threads.map((e) => e.address).sort(), [...ALL].sort(), 'one driver thread per device');
  t.is(new Set(threads.map((e) => e.threadId)).size, ALL.length, 'each in a thread of its own');

  const disk = await r.host.blockDevice('soakn1', 120_000);
  const nic = r.host.packetPort('nic');
  await until('the NIC attached with its link up', () => nic.attached !== undefined && nic.linkState.up, 60_000);

  // The NVMe load: each loop writes a pattern of its own (its number and the round in every word) and reads it back.
  let ioStop = false;
  let ioRounds = 0;
  let lastIo: number | undefined;
  let maxIoGap = 0;
  const ioWrong: string[] = [];
  const ioLoop = async (loop: number) => {
    const out = new Uint8Array(allocShared(IO_BYTES));
    const back = new Uint8Array(allocShared(IO_BYTES));
    const words = new Uint32Array(out.buffer, 0, IO_BYTES / 4);
    const blocks = IO_BYTES / disk.blockSize;
    for (let round = 0; !ioStop; round++) {
      words.fill(((loop << 24) | round) >>> 0);
      const lba = loop * blocks * 16 + (round % 16) * blocks;
      await disk.write(lba, out);
      await disk.read(lba, blocks, back);
      if (Buffer.compare(out, back) !== 0) ioWrong.push(`loop ${loop} round ${round} at LBA ${lba}`);
      const now = performance.now();
      if (lastIo !== undefined) maxIoGap = Math.max(maxIoGap, now - lastIo);
      lastIo = now;
      ioRounds++;
    }
  };
  const ioLoops = Array.from({ length: IO_LOOPS }, (_, i) => ioLoop(i));

  // The network load: rounds of numbered frames each way, both directions at once, each round checked.
  let netStop = false;
  const toKernel: Counted = { received: 0, bad: 0, duplicates: 0, reordered: 0 };
  const fromKernel: Counted = { received: 0, bad: 0, duplicates: 0, reordered: 0 };
  let netRounds = 0;
  /** Frames of the rounds that ended, each way. */
  const sent = { toKernel: 0, fromKernel: 0 };
  const mac = nic.attached!.mac;
  const netOut = async () => {
    while (!netStop) {
      const rx = peer.receive(NET_ROUND, 10_000);
      await rx.ready;
      await sendSequence(nic, peer.mac, NET_ROUND, (seq) => 60 + (seq % 1455), NET_PER_SECOND);
      const result: ReceiveResult = await rx.result;
      add(toKernel, result);
      sent.toKernel += NET_ROUND;
      netRounds++;
    }
  };
  const netIn = async () => {
    while (!netStop) {
      const c = collect(nic, NET_ROUND);
      try {
        await peer.send(mac, NET_ROUND, 60, 1514, NET_PER_SECOND);
        await until(`${NET_ROUND} frames from the kernel`, () => c.check.received >= NET_ROUND, 10_000).catch(() => undefined);
      } finally {
        c.stop();
      }
      add(fromKernel, c.check as SequenceCheck & Counted);
      sent.fromKernel += NET_ROUND;
      netRounds++;
    }
  };
  const netLoops = [netOut(), netIn()];

  const start = EDUS.map((a) => r.host.interruptCount(a));
  const nicStats = nic.stats();
  const heaps = new Map<string, ThreadStats[]>();
  // The soak's clock starts when the sampler's does: every moment of it is sampled.
  const soakFrom = await sampler.start({ sampleMs: SAMPLE_MS, rising: EDUS.map((a) => r.host.threadLedger(a)!), beating: ALL.map((a) => r.host.threadLedger(a)!) });
  await sleep(SOAK_MS);
  const sampled = await sampler.stop();
  for (const e of r.events) {
    // From the soak's start: a thread's ledger holds no heap numbers before its first beat.
    if (e.type === 'stats' && e.thread !== undefined && e.at >= soakFrom) heaps.set(e.address, [...(heaps.get(e.address) ?? []), e.thread]);
  }
  const counted = EDUS.map((a, i) => r.host.interruptCount(a) - start[i]!);
  ioStop = true;
  const ioSettled = await Promise.allSettled(ioLoops);
  t.log(`${NVME}: ${ioRounds} write+read round trips of ${IO_BYTES / 1024} KiB by ${IO_LOOPS} loops, longest gap ${Math.round(maxIoGap)} ms`);
  t.deepEqual(ioSettled.flatMap((x) => (x.status === 'rejected' ? [String(x.reason)] : [])), [], 'no NVMe request failed');
  t.deepEqual(ioWrong, [], 'every NVMe read returned what was written');
  t.true(ioRounds > IO_LOOPS * 10, `the NVMe load kept going (${ioRounds} round trips)`);
  t.true(maxIoGap <= MAX_IO_GAP_MS, `no NVMe request stalled: longest gap between round trips ${Math.round(maxIoGap)} ms`);
  netStop = true;
  const netSettled = await Promise.allSettled(netLoops);
  const nicAfter = nic.stats();
  t.log(`${NIC}: ${netRounds} rounds of ${NET_ROUND} frames at ${NET_PER_SECOND}/s; to the kernel ${JSON.stringify(toKernel)}, from the kernel ${JSON.stringify(fromKernel)}; port rx ${JSON.stringify(nicAfter.rx)} tx ${JSON.stringify(nicAfter.tx)}; ${r.host.interruptCount(NIC)} interrupts`);
  t.deepEqual(netSettled.flatMap((x) => (x.status === 'rejected' ? [String(x.reason)] : [])), [], 'no network round failed');
  t.true(netRounds >= 4, `the network load kept going (${netRounds} rounds)`);
  t.deepEqual([toKernel.received, fromKernel.received], [sent.toKernel, sent.fromKernel], 'every frame sent each way arrived');
  t.like(toKernel, { bad: 0, duplicates: 0, reordered: 0 }, 'upci → kernel: none damaged, twice or out of order');
  t.like(fromKernel, { bad: 0, duplicates: 0, reordered: 0 }, 'kernel → upci: none damaged, twice or out of order');
  t.is(nicAfter.rx.unconsumed - nicStats.rx.unconsumed, 0, 'every frame the NIC received had a consumer');
  const report = await r.host.shutdown();
  t.false(report.forced, 'every driver stopped cleanly');
  t.false(r.events.some((e) => e.type === 'fault'), 'no fault in the soak');

  t.log(`sampler: longest interval between its own samples ${Math.round(sampled.maxSampleIntervalMs)} ms; oldest heartbeat of any driver thread ${Math.round(sampled.maxHeartbeatAgeMs)} ms`);
  EDUS.forEach((a, i) => {
    const gap = sampled.rising[i]!.maxGapMs;
    const counts = sampled.beyondStarvation(gap);
    t.log(`${a}: ${counted[i]} interrupts in ${SOAK_MS / 1000} s (${Math.round(counted[i]! / (SOAK_MS / 1000))}/s), longest gap ${Math.round(gap)} ms, ${Math.round(counts)} ms beyond the sampler's longest interval`);
    t.true(counted[i]! > SOAK_MS / 100, `${a}: interrupts kept coming (${counted[i]})`);
    t.true(counts <= MAX_GAP_MS, `${a}: no interrupt lost (a lost one stops the raise loop): longest gap ${Math.round(gap)} ms, ${Math.round(counts)} ms beyond the sampler's longest interval ${Math.round(sampled.maxSampleIntervalMs)} ms`);
    const tally = r.events.find((e) => e.type === 'note' && e.address === a && e.message.startsWith('interrupts: raised'));
    t.truthy(tally, `${a}: the driver noted its accounting at the stop`);
    const [raised, serviced, outside, notOurs] = (/raised (\d+), serviced (\d+) \((\d+) outside a raise\), (\d+) not ours/.exec(tally!.type === 'note' ? tally!.message : '') ?? []).slice(1).map(Number);
    t.log(`${a}: ${tally!.type === 'note' ? tally!.message : ''}; the host delivered ${r.host.interruptCount(a)}`);
    t.true(serviced === raised || serviced === raised! - 1, `${a}: every raise serviced once (one may be in flight at the stop): raised ${raised}, serviced ${serviced}`);
    t.is(outside, 0, `${a}: no interrupt serviced without a raise outstanding (a duplicate)`);
    t.true(notOurs! <= NOT_OURS[EDU_TYPES[i]!], `${a} (${EDU_TYPES[i]}): no event refused as not ours, i.e. no serviced interrupt delivered again: ${notOurs} refused`);
    const delivered = r.host.interruptCount(a) - serviced! - notOurs!;
    t.true(delivered === 0 || delivered === 1, `${a}: the host delivered what the driver serviced or refused (+ the one in flight): ${delivered} more`);
  });
  for (const a of ALL) {
    const seen = heaps.get(a) ?? [];
    t.true(seen.length >= SOAK_MS / 1000 / 2, `${a}: its thread's heap reported in the stats (${seen.length} times)`);
    const used = seen.map((s) => s.heapUsed);
    t.true(used.every((u, k) => u > 0 && u < seen[k]!.heapLimit), `${a}: heap used within its limit`);
    t.log(`${a} thread ${seen[0]?.threadId}: heap ${(Math.min(...used) / 2 ** 20).toFixed(1)}..${(Math.max(...used) / 2 ** 20).toFixed(1)} MiB of ${((seen[0]?.heapLimit ?? 0) / 2 ** 20).toFixed(0)} MiB, last heartbeat age ${seen.at(-1)?.heartbeatAgeMs} ms`);
  }
});
