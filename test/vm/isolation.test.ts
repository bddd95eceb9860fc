/**
 * Driver isolation in the VM (issue 13): each driver incarnation in its own
 * worker thread, woken by its own event loop. A driver that spins, blocks or
 * leaks is detected by the main thread (heartbeat in shared memory), its
 * device taken back while its thread still runs (bus mastering read back
 * off from config space, vectors off, no DMA mapping left in the IOMMU
 * domain), its thread terminated and the driver restarted in a new one,
 * while the other edu and pci-testdev carry on. Two devices of one IOMMU
 * group (one VFIO container, one IOVA space) driven from two threads never
 * get the same IOVA, and taking one back leaves the other's DMA mapped.
 */
import test from 'ava';
import { randomFillSync } from 'node:crypto';
import { readdirSync, realpathSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { HostEvent } from '../../actors/events.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { EDU as EDU_REGS } from '../../drivers/edu-registers.js';
import { BusDma, DmaSync } from '../../pci/bus-dma.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../pci/config.js';
import { PciDevice } from '../../pci/device.js';
import { bench, EDU_CHUNK, eduDma, iovaSpace, sysfsConfig } from './devices.js';
import { run } from './host-run.js';
import { mainThreadLateness, progressSampler } from './sampling.js';

const EDU = parsePciAddress(bench.edu);
const EDU2 = parsePciAddress(bench.edu2);
const TESTDEV = parsePciAddress(bench.testdev);

/**
 * 3 s, not the default 1 s: in the TCG guest a healthy driver thread's first
 * seconds (V8 compiling xstate and rxjs paths on first use, with 2 vCPUs
 * for four busy threads) can go a second without a turn of its loop.
 */
const WATCHDOG_MS = 3000;
const HEARTBEAT_MS = 100;
/** The healthy edu raises one interrupt per this; pci-testdev checks its counter once per CHECK_MS. */
const RAISE_MS = 50;
const CHECK_MS = 100;
/** pci-testdev notes every this many checks, with the device's count and its thread's time. */
const NOTE_EVERY = 5;
const SAMPLE_MS = 100;
/**
 * The faulty edu's fault comes at this interrupt (one per 5 ms at best; 35 ms
 * each were seen in the loaded guest): late enough that edu2 has finished its
 * self-test and its interrupts flow before the fault, so the sampled window
 * holds the fault and the recovery, not edu2's own start (its self-test alone
 * was a 900 ms "gap" when the fault came at interrupt 20). 400, not 200: the sampler now
 * reports when it really started, and a break run saw interrupt 200 come 560 ms before that.
 */
const FAULT_AFTER = 400;
/** edu2 interrupts seen before sampling starts. */
const EDU2_WARM = 10;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const busMaster = (address: string) => (sysfsConfig(address).readUInt16LE(PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;
const tasks = () => readdirSync('/proc/self/task').length;
const fds = () => readdirSync('/proc/self/fd').length;

const inState = (address: string, state: string, nth = 1) => (events: HostEvent[]) =>
  events.filter((e) => e.type === 'state' && e.address === address && e.state === state).length >= nth;
const noteAt = (events: HostEvent[], address: string, pattern: RegExp) =>
  events.find((e) => e.type === 'note' && e.address === address && pattern.test(e.message));
const parseRange = (hex: string) => {
  const [start, end] = hex.split('-').map((x) => BigInt(x)) as [bigint, bigint];
  return { start, end };
};
const hexRanges = (ranges: readonly { start: bigint; end: bigint }[]) => ranges.map((w) => `0x${w.start.toString(16)}-0x${w.end.toString(16)}`).join(' ');
const checks = (events: HostEvent[]) => events.filter((e) => e.type === 'note' && e.address === TESTDEV && /counter check #\d+ ok/.test(e.message)).length;

const faults = [
  { name: 'spins forever', option: { spinAfterInterrupts: FAULT_AFTER }, note: /spinning forever/, heapLimitMb: 256 },
  { name: 'blocks in a synchronous loop for 10 s', option: { blockAfterInterrupts: FAULT_AFTER }, note: /blocking for 10000 ms/, heapLimitMb: 256 },
  { name: 'allocates without bound', option: { leakAfterInterrupts: FAULT_AFTER }, note: /leaking memory/, heapLimitMb: 96 },
] as const;

for (const fault of faults) {
  test.serial(`an edu driver that ${fault.name} is detected, its device taken back while its thread runs, the thread terminated and the driver restarted; the other devices never stop`, async (t) => {
    let quiescedBusMaster: boolean | undefined;
    const sampler = progressSampler();
    const r = run(t, {
      watchdogMs: WATCHDOG_MS,
      heartbeatMs: HEARTBEAT_MS,
      statsIntervalMs: 500,
      restart: { initialDelayMs: 100, maxRestarts: 2 },
      devices: [
        { address: EDU, driver: 'edu', heapLimitMb: fault.heapLimitMb, options: { interrupt: 'msi', raiseIntervalMs: 5, ...fault.option } },
        { address: EDU2, driver: 'edu', options: { interrupt: 'msi', raiseIntervalMs: RAISE_MS } },
        { address: TESTDEV, driver: 'pci-testdev', options: { checkIntervalMs: CHECK_MS, noteEvery: NOTE_EVERY } },
      ],
    }, {
      onEvent: (e) => {
        // Read in the event's own turn: the faulty thread has not been terminated yet.
        if (e.type === 'quiesced' && e.address === EDU && quiescedBusMaster === undefined) quiescedBusMaster = busMaster(EDU);
      },
    });
    await r.until('all running', (e) => inState(EDU, 'running')(e) && inState(EDU2, 'running')(e) && inState(TESTDEV, 'running')(e));
    await r.until('a port check', (e) => checks(e) >= 1);
    await r.until(`edu2's self-test and its first ${EDU2_WARM} interrupts`, (e) => noteAt(e, EDU2, /self-test passed/) !== undefined && r.host.interruptCount(EDU2) >= EDU2_WARM);
    const samplingFrom = await sampler.start({ sampleMs: SAMPLE_MS, rising: [r.host.threadLedger(EDU2)!], beating: [r.host.threadLedger(TESTDEV)!] });
    // Diagnostic (logged, not asserted): how long this thread, the supervisor's, was busy at a time.
    const mainLoop = monitorEventLoopDelay({ resolution: 10 });
    mainLoop.enable();
    const mainLate = mainThreadLateness(HEARTBEAT_MS / 4, HEARTBEAT_MS);
    await r.until('the fault', (e) => e.some((x) => x.type === 'fault' && x.address === EDU), 60_000);
    // The sampled window: from before the fault to the restart's new thread, i.e. the fault and the take-back.
    // Not the new thread's start: a fresh isolate compiling its modules in the TCG guest stalls its neighbours
    // for up to a second (run 1: edu2's gaps of 467, 425 and 1,028 ms all fell 6-22 s after the fault, while
    // the restarted edu loaded), as any driver's start does, which is why sampling begins after edu2's warm-up.
    await r.until('the restart\'s new thread', (e) => e.some((x) => x.type === 'thread' && x.address === EDU && x.incarnation === 1), 60_000);
    const sampled = await sampler.stop();
    const g2 = sampled.rising[0]!;
    mainLoop.disable();
    const mainLateness = mainLate.stop();
    await r.until('edu running again', inState(EDU, 'running', 2), 60_000);
    await r.until('the second self-test', (e) => noteAt(e, EDU, /self-test passed \(incarnation 1\)/) !== undefined);
    const after = r.host.interruptCount(EDU);
    await r.until('edu interrupts after the restart', () => r.host.interruptCount(EDU) > after + 20);
    const checksSeen = checks(r.events);

    const injected = noteAt(r.events, EDU, fault.note)!;
    t.truthy(injected, 'the fault was injected');
    t.true(injected.at > samplingFrom, `the other devices were sampled from before the fault (raise FAULT_AFTER if this fails): sampling from ${samplingFrom}, fault note at ${injected.at}`);
    const faultEvent = r.events.find((e) => e.type === 'fault' && e.address === EDU)!;
    t.like(faultEvent, { fault: { kind: 'watchdog', incarnation: 0 } });
    const detectedMs = faultEvent.at - injected.at;
    t.log(`detected ${detectedMs} ms after the injection note arrived; edu2 max gap ${Math.round(g2.maxGapMs)} ms (${g2.rises} rises), pci-testdev thread's oldest heartbeat ${Math.round(sampled.maxHeartbeatAgeMs)} ms, ${checksSeen} check notes`);
    t.log(`edu2's max gap ended ${g2.maxGapEndedAt - faultEvent.at} ms after the fault event; edu2 thread's oldest heartbeat ${Math.round(g2.heartbeatAgeMs)} ms; the sampler's longest interval ${Math.round(sampled.maxSampleIntervalMs)} ms; the main thread's event loop delay max ${Math.round(mainLoop.max / 1e6)} ms, p99 ${Math.round(mainLoop.percentile(99) / 1e6)} ms`);
    if (!('leakAfterInterrupts' in fault.option)) {
      // Judged by what the watchdog counted while the thread could run (its checks' intervals, each
      // at most one heartbeat period, less the thread's run-queue wait), not by the wall clock a starved guest stretches.
      const silence = (faultEvent as { fault: { silence?: { ageMs: number; whileRunningMs: number; threadWaitedMs: number } } }).fault.silence;
      t.log(`the watchdog: no beat for ${silence?.ageMs} ms, ${silence?.whileRunningMs} ms of it while the thread could run, ${silence?.threadWaitedMs} ms waiting to run`);
      t.true(silence !== undefined && silence.whileRunningMs >= WATCHDOG_MS && silence.whileRunningMs <= WATCHDOG_MS + HEARTBEAT_MS,
        `detected at watchdogMs and within watchdogMs + heartbeatMs (${WATCHDOG_MS + HEARTBEAT_MS} ms) of silence while the thread could run: ${silence?.whileRunningMs} ms`);
      // What it left uncounted beyond the driver thread's own run-queue wait must be time this process did
      // not run, as a timer of this thread that counts by the same rule saw it (+ one heartbeat period).
      const uncounted = silence === undefined ? NaN : silence.ageMs - silence.whileRunningMs - silence.threadWaitedMs;
      const witnessed = silence === undefined ? NaN : Math.round(mainLateness.starvedMs(faultEvent.at - silence.ageMs, faultEvent.at));
      t.true(uncounted <= witnessed + HEARTBEAT_MS, `the watchdog left ${uncounted} ms of the silence uncounted; this thread was seen not running for ${witnessed} ms of it; detected ${detectedMs} ms after the injection note`);
    } else {
      t.regex((faultEvent as { fault: { message: string } }).fault.message, /heap reached \d+ MiB of its 96 MiB limit/);
    }
    const quiesced = r.events.find((e) => e.type === 'quiesced' && e.address === EDU && e.incarnation === 0);
    t.like(quiesced, { report: { threadRunning: true, busMaster: false, vectorsDisabled: 'msi', msiEnabled: false, msixEnabled: false, dmaMappingsLeft: 0 } });
    t.is(quiescedBusMaster, false, 'bus mastering read back off from sysfs config space before the thread was terminated');
    const threads = r.events.filter((e): e is Extract<HostEvent, { type: 'thread' }> => e.type === 'thread' && e.address === EDU);
    t.is(threads.length, 2, 'a new thread for the new incarnation');
    t.not(threads[0]!.threadId, threads[1]!.threadId);
    t.deepEqual(
      r.events.flatMap((e) => (e.type === 'state' && e.address === EDU ? [e.state] : [])),
      ['claimed', 'attaching', 'running', 'failed', 'resetting', 'attaching', 'running'],
    );
    // A gap counts only beyond the sampler thread's own longest interval: a guest starved as a whole starves the sampler too.
    const beyond = (ms: number) => Math.round(sampled.beyondStarvation(ms));
    // And only for the time edu2's own thread could run: what it spent in the run queue behind the spinning driver is the guest's CPU, not edu2.
    t.true(beyond(g2.maxRunnableGapMs) <= 3 * RAISE_MS + SAMPLE_MS, `edu2's interrupts never stopped for over 3x its raise interval (+ one sample) while its thread could run, beyond the sampler's longest interval (${Math.round(sampled.maxSampleIntervalMs)} ms): ${Math.round(g2.maxRunnableGapMs)} ms of a ${Math.round(g2.maxGapMs)} ms gap`);
    t.true(beyond(sampled.maxHeartbeatAgeMs) <= 3 * CHECK_MS, `pci-testdev's thread never stopped for over 3x its check interval beyond the sampler's longest interval: ${Math.round(sampled.maxHeartbeatAgeMs)} ms`);
    // pci-testdev's device kept counting, not just its thread beating: its noted checks over the sampled
    // window, each NOTE_EVERY checks (5 counted writes each) after the last, by its thread's clock.
    const noted = r.events.flatMap((e) => {
      const m = e.type === 'note' && e.address === TESTDEV ? /counter check #(\d+) ok \(count (\d+)\) at (\d+)/.exec(e.message) : null;
      return m === null ? [] : [{ check: Number(m[1]), count: Number(m[2]), at: Number(m[3]) }];
    }).filter((c) => c.at >= samplingFrom && c.at <= sampled.stoppedAt);
    const steps = noted.slice(1).map((c, k) => ({ checks: c.check - noted[k]!.check, counted: c.count - noted[k]!.count, ms: c.at - noted[k]!.at }));
    // And from the last noted check to the window's end: no note at all for a while is no progress either.
    const sinceLast = sampled.stoppedAt - (noted.at(-1)?.at ?? samplingFrom);
    t.log(`pci-testdev: ${noted.length} noted checks in the sampled window, longest step ${Math.max(...steps.map((s) => s.ms))} ms, ${sinceLast} ms from the last to the window's end`);
    t.true(noted.length >= 2 && noted[0]!.at < injected.at && noted.at(-1)!.at > injected.at, `pci-testdev's checks were noted before the fault and through it (${noted.length})`);
    t.deepEqual(steps.filter((s) => s.checks !== NOTE_EVERY || s.counted !== 5 * NOTE_EVERY), [], `each noted check ${NOTE_EVERY} checks and ${5 * NOTE_EVERY} device counts after the last`);
    t.deepEqual([...steps.map((s) => s.ms), sinceLast].filter((ms) => beyond(ms) > 3 * NOTE_EVERY * CHECK_MS), [], `pci-testdev never went over 3x ${NOTE_EVERY} check intervals (${3 * NOTE_EVERY * CHECK_MS} ms) between noted checks beyond the sampler's longest interval`);
    t.false(r.events.some((e) => e.type === 'fault' && e.address !== EDU));
    const stats = r.events.filter((e): e is Extract<HostEvent, { type: 'stats' }> => e.type === 'stats' && e.address === EDU2).at(-1);
    t.truthy(stats?.thread, 'stats report the driver thread');
    t.log(`edu2 thread: ${JSON.stringify(stats?.thread)}`);
    const report = await r.host.shutdown();
    t.false(report.forced);
    for (const a of [EDU, EDU2, TESTDEV]) t.false(busMaster(a));
  });
}

test.serial('a driver that throws is restarted in a new thread; shutdown leaves no worker thread and no fd behind', async (t) => {
  const tasksBefore = tasks();
  const fdsBefore = fds();
  const r = run(t, {
    restart: { initialDelayMs: 100, maxRestarts: 2 },
    devices: [
      { address: EDU, driver: 'edu', options: { interrupt: 'intx', raiseIntervalMs: 5, failAfterInterrupts: 20 } },
      { address: EDU2, driver: 'edu', options: { interrupt: 'msi', raiseIntervalMs: 0 } },
      { address: TESTDEV, driver: 'pci-testdev' },
    ],
  });
  await r.until('edu running again', inState(EDU, 'running', 2));
  t.like(r.events.find((e) => e.type === 'fault'), { address: EDU, fault: { kind: 'crash', message: 'fault injection: failAfterInterrupts=20 reached', incarnation: 0 } });
  const threads = r.events.filter((e): e is Extract<HostEvent, { type: 'thread' }> => e.type === 'thread' && e.address === EDU);
  t.deepEqual(threads.map((e) => e.incarnation), [0, 1], 'one thread event per incarnation');
  t.not(threads[0]!.threadId, threads[1]!.threadId, 'the restarted driver runs in a new thread');
  const during = tasks();
  t.log(`threads: ${tasksBefore} before, ${during} with three driver threads`);
  t.true(during >= tasksBefore + 3, 'each driver has its thread');
  const report = await r.host.shutdown();
  t.false(report.forced);
  // A terminated worker's OS thread is joined by the time its exit is reported.
  for (let i = 0; i < 50 && (tasks() !== tasksBefore || fds() !== fdsBefore); i++) await sleep(100);
  t.is(tasks(), tasksBefore, 'no driver thread left');
  t.is(fds(), fdsBefore, 'no fd left (device, group, container, eventfds)');
});

test.serial('two edus of one IOMMU group, one driven here and one in a driver thread: the thread maps only in its DMA window, and taking it back leaves this thread\'s mappings', async (t) => {
  const [inThread, here] = bench.eduPairInOneGroup.map(parsePciAddress) as [ReturnType<typeof parsePciAddress>, ReturnType<typeof parsePciAddress>];
  const group = (address: string) => realpathSync(`/sys/bus/pci/devices/${address}/iommu_group`);
  t.is(group(inThread), group(here), 'the bench puts both edus in one IOMMU group');
  // Opened first, so its maps hold the lowest IOVAs of the container's space: where a driver
  // thread allocating over the whole space would start too (VFIO_IOMMU_MAP_DMA: EEXIST).
  const device = PciDevice.open(here);
  t.teardown(() => device.close());
  const bar = device.mapBar(0);
  const dma = BusDma.forDevice(device);
  const tag = dma.createTag({ alignment: 4096, addressLimit: EDU_REGS.DMA_LIMIT, maxSegments: 1 });
  const src = tag.allocMemory(4096);
  const dst = tag.allocMemory(4096);
  const srcMap = tag.createMap().load(src);
  const dstMap = tag.createMap().load(dst);
  dma.enableBusMaster();
  const roundTrip = (when: string) => {
    const data = randomFillSync(new Uint8Array(EDU_CHUNK));
    new Uint8Array(src.buffer).set(data);
    new Uint8Array(dst.buffer).fill(0);
    srcMap.sync(DmaSync.PREWRITE);
    eduDma(bar, BigInt(srcMap.busAddress(0)), EDU_REGS.BUFFER, EDU_CHUNK, false);
    dstMap.sync(DmaSync.PREREAD);
    eduDma(bar, EDU_REGS.BUFFER, BigInt(dstMap.busAddress(0)), EDU_CHUNK, true);
    dstMap.sync(DmaSync.POSTREAD);
    t.deepEqual(new Uint8Array(dst.buffer, 0, EDU_CHUNK), data, `${when}: this thread's edu DMA round trip`);
  };
  roundTrip('before the driver thread');
  const r = run(t, {
    restart: { initialDelayMs: 100, maxRestarts: 1 },
    devices: [{ address: inThread, driver: 'edu', options: { interrupt: 'msi', raiseIntervalMs: 5, failAfterInterrupts: 50 } }],
  });
  // Its attach maps two pages in its window and round-trips 1 KiB through them (the self-test).
  await r.until('the driver thread\'s self-test', (e) => noteAt(e, inThread, /self-test passed \(incarnation 0\)/) !== undefined);
  roundTrip('with the driver thread running');
  await r.until('the first incarnation taken back', (e) => e.some((x) => x.type === 'quiesced' && x.address === inThread && x.incarnation === 0));
  const quiesced = r.events.find((e) => e.type === 'quiesced' && e.address === inThread && e.incarnation === 0);
  // Counted over the whole container: this thread's two mappings must still be there, no more and no fewer.
  t.like(quiesced, { report: { busMaster: false, dmaMappingsLeft: 0 } });
  roundTrip('after the driver thread was taken back');
  await r.until('the second incarnation\'s self-test, in a new window', (e) => noteAt(e, inThread, /self-test passed \(incarnation 1\)/) !== undefined);
  roundTrip('with the second driver thread running');
  const report = await r.host.shutdown();
  t.false(report.forced);
  roundTrip('after the host released its edu');
  // Where each incarnation mapped (its self-test's two maps, as it noted them) against the window its thread was given.
  const windows = r.events.flatMap((e) => (e.type === 'thread' && e.address === inThread ? [{ incarnation: e.incarnation, ranges: e.dmaWindow.map(parseRange) }] : []));
  t.deepEqual(windows.map((w) => w.incarnation), [0, 1], 'a thread, with its window, per incarnation');
  const mine = [srcMap, dstMap].map((m) => BigInt(m.busAddress(0)));
  for (const { incarnation, ranges } of windows) {
    const note = noteAt(r.events, inThread, new RegExp(`self-test passed \\(incarnation ${incarnation}\\).*bus addresses (0x[0-9a-f]+) (0x[0-9a-f]+)`));
    const mapped = note?.type === 'note' ? [...note.message.matchAll(/0x[0-9a-f]+/g)].map((m) => BigInt(m[0])) : [];
    t.log(`incarnation ${incarnation}: window ${hexRanges(ranges)}, mapped at ${mapped.map((a) => `0x${a.toString(16)}`).join(' ')}`);
    t.is(mapped.length, 2, `incarnation ${incarnation} noted where it mapped`);
    t.true(ranges.length > 0 && mapped.every((a) => ranges.some((w) => w.start <= a && a + 4096n - 1n <= w.end)), `incarnation ${incarnation} mapped only in its DMA window`);
    t.false(mine.some((a) => ranges.some((w) => w.start <= a && a <= w.end)), `incarnation ${incarnation}'s window holds none of this thread's mappings`);
  }
  t.false(windows[1]!.ranges.some((w) => windows[0]!.ranges.some((v) => w.start <= v.end && v.start <= w.end)), 'the second incarnation got a new window, not the first one\'s (still in quarantine)');
  // The windows went back to this thread's allocator (to its quarantine): only this thread's two pages are allocated.
  t.is(iovaSpace(device).allocations, 2);
  t.true(iovaSpace(device).quarantined >= 4, 'two windows of two parts each wait out their quarantine');
});
