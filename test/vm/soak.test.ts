/**
 * A 60 s soak (issue 13): four of the bench's devices in one host process,
 * each driver in a thread of its own, under load (e1000e, whose driver still
 * runs in the main thread, is not in it): edu raising MSIs and a second edu
 * raising INTx back to back (each raise waits for its interrupt), pci-testdev
 * checking its port counter, and an NVMe namespace written and read back by
 * four loops in this thread through the block API's shared-memory rings.
 * Nothing may be lost (a lost interrupt would stop that edu for good:
 * sampled every 100 ms, neither count may stand still for over 1 s; every
 * read returns what was written) or duplicated (each edu's own accounting,
 * noted at the stop, against what the host delivered), and each thread's
 * heap is reported.
 */
import test from 'ava';
import type { HostEvent } from '../../actors/events.js';
import type { ThreadStats } from '../../actors/meter.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { allocShared } from '../../shm/mapping.js';
import { bench } from './devices.js';
import { run } from './host-run.js';

const SOAK_MS = 60_000;
const SAMPLE_MS = 100;
/** The longest a flat-out edu may go without an interrupt: the guest's vCPUs are shared by four busy threads. */
const MAX_GAP_MS = 1_000;

const EDU = parsePciAddress(bench.edu);
const EDU2 = parsePciAddress(bench.edu2);
const TESTDEV = parsePciAddress(bench.testdev);
const NVME = parsePciAddress(bench.nvme);
const EDUS = [EDU, EDU2] as const;
const ALL = [EDU, EDU2, TESTDEV, NVME] as const;
/** NVMe load: loops writing and reading back requests of this many bytes, each in a region of its own. */
const IO_LOOPS = 4;
const IO_BYTES = 64 * 1024;
/** The longest the NVMe load may go without a completed round trip. */
const MAX_IO_GAP_MS = 5_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const running = (address: string) => (events: HostEvent[]) => events.some((e) => e.type === 'state' && e.address === address && e.state === 'running');

test(`edu (MSI), edu (INTx), pci-testdev and nvme in one process, each driver in its own thread, ${SOAK_MS / 1000} s under load: nothing lost or duplicated, each thread's heap reported`, async (t) => {
  t.timeout(SOAK_MS + 240_000);
  const r = run(t, {
    statsIntervalMs: 1000,
    devices: [
      { address: EDU, driver: 'edu', options: { interrupt: 'msi', raiseIntervalMs: 0 } },
      { address: EDU2, driver: 'edu', options: { interrupt: 'intx', raiseIntervalMs: 0 } },
      { address: TESTDEV, driver: 'pci-testdev', options: { checkIntervalMs: 100 } },
      { address: NVME, name: 'soak', driver: 'nvme', options: { ioQueues: 1, queueDepth: 16 } },
    ],
  });
  await r.until('every driver running', (e) => ALL.every((a) => running(a)(e)), 180_000);
  await r.until('both edus past their self-tests', (e) => EDUS.every((a) => e.some((x) => x.type === 'note' && x.address === a && /self-test passed/.test(x.message))));

  const threads = r.events.filter((e): e is Extract<HostEvent, { type: 'thread' }> => e.type === 'thread');
  t.deepEqual(threads.map((e) => e.address).sort(), [...ALL].sort(), 'one driver thread per device');
  t.is(new Set(threads.map((e) => e.threadId)).size, ALL.length, 'each in a thread of its own');

  const disk = await r.host.blockDevice('soakn1', 120_000);

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

  const start = EDUS.map((a) => r.host.interruptCount(a));
  const last = [...start];
  const lastRise = EDUS.map(() => performance.now());
  const maxGap = EDUS.map(() => 0);
  const heaps = new Map<string, ThreadStats[]>();
  const soakFrom = Date.now();
  const end = performance.now() + SOAK_MS;
  while (performance.now() < end) {
    await sleep(SAMPLE_MS);
    const now = performance.now();
    EDUS.forEach((a, i) => {
      const c = r.host.interruptCount(a);
      if (c !== last[i]) {
        last[i] = c;
        lastRise[i] = now;
      }
      maxGap[i] = Math.max(maxGap[i]!, now - lastRise[i]!);
    });
  }
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
  const report = await r.host.shutdown();
  t.false(report.forced, 'every driver stopped cleanly');
  t.false(r.events.some((e) => e.type === 'fault'), 'no fault in the soak');

  EDUS.forEach((a, i) => {
    t.log(`${a}: ${counted[i]} interrupts in ${SOAK_MS / 1000} s (${Math.round(counted[i]! / (SOAK_MS / 1000))}/s), longest gap ${Math.round(maxGap[i]!)} ms`);
    t.true(counted[i]! > SOAK_MS / 100, `${a}: interrupts kept coming (${counted[i]})`);
    t.true(maxGap[i]! <= MAX_GAP_MS, `${a}: no interrupt lost (a lost one stops the raise loop): longest gap ${Math.round(maxGap[i]!)} ms`);
    const tally = r.events.find((e) => e.type === 'note' && e.address === a && e.message.startsWith('interrupts: raised'));
    t.truthy(tally, `${a}: the driver noted its accounting at the stop`);
    const [raised, serviced, outside, notOurs] = (/raised (\d+), serviced (\d+) \((\d+) outside a raise\), (\d+) not ours/.exec(tally!.type === 'note' ? tally!.message : '') ?? []).slice(1).map(Number);
    t.log(`${a}: ${tally!.type === 'note' ? tally!.message : ''}; the host delivered ${r.host.interruptCount(a)}`);
    t.true(serviced === raised || serviced === raised! - 1, `${a}: every raise serviced once (one may be in flight at the stop): raised ${raised}, serviced ${serviced}`);
    t.is(outside, 0, `${a}: no interrupt serviced without a raise outstanding (a duplicate)`);
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
