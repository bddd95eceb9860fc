/**
 * The NVMe driver in the VM, on QEMU's nvme controllers (vm/bench.ts: nvme0
 * with two namespaces, nvme1 with one, raw images in the run's out dir):
 * Identify against the command line, 64 MiB of mixed-size I/O checked
 * against the host's backing file, bad input refused before the controller,
 * unregistered memory bounced (no map per request) and a DMA to a freed
 * IOVA faulting in the IOMMU, two controllers in one host, a driver crash
 * mid-I/O under supervision, and command timeouts (a command the controller
 * never sees: Abort, controller reset, re-issue; one it never completes:
 * NvmeTimeoutError at the second reset; a reset that cannot finish: a
 * driver fault and a supervised restart; a lost admin command: a reset).
 * The driver runs in its own thread (its namespaces reach these tests as
 * BlockProxy over shared-memory rings), except where a test looks inside
 * the controller (nvme1 in the first test, the command-timeout tests):
 * there it runs in the main thread ('nvme-main').
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockProxy } from '../../services/block-service.js';
import { NbdServer } from '../../exports/nbd-server.js';
import { BlockGoneError, type BlockDevice } from '../../drivers/block.js';
import { builtinDrivers } from '../../drivers/index.js';
import { nvmeDriver } from '../../drivers/nvme/index.js';
import { NvmeNamespace } from '../../drivers/nvme/namespace.js';
import { NvmeStatusError } from '../../drivers/nvme/errors.js';
import { ADMIN, CNS, decodeIdentifyController } from '../../drivers/nvme/registers.js';
import { parsePciAddress, type PciAddress } from '../../kernel/pci-address.js';
import { BusDma } from '../../pci/bus-dma.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../pci/config.js';
import { PciDevice } from '../../pci/device.js';
import { defaultKernelPort } from '../../pci/kernel-port.js';
import { allocShared } from '../../shm/mapping.js';
import { withMainThread } from '../../vm/main-thread-drivers.js';
import { defaultDevices } from '../../vm/bench.js';
import { bench, dmarFaults, type DmarFault, iovaSpace, sysfsBusMaster, sysfsConfig } from './devices.js';
import { recordingPort, resetsAndCloses, type PortRecord } from '../support/recording-port.js';
import { until } from '../support/bounded.js';
import { run, type Run, type RunOptions } from './host-run.js';
import { misplacedInImage, sh } from './disk-check.js';
import { fill, parallel, pieces } from './disk-io.js';
import diskUser, { BLOCKS, DISK, FIRST_LBA, mismatches } from '../fixtures/disk-user-driver.js';
import { rememberSource } from '../../actors/driver-source.js';

const NVME0 = parsePciAddress(bench.nvme);
const NVME1 = parsePciAddress(bench.nvme1);
const OUT = process.env.UPCI_VM_OUT ?? '/tmp/upci-out';
const MiB = 1024 * 1024;

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const busMaster = (address: string) => (sysfsConfig(address).readUInt16LE(PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;


const benchNvme = (slot: string) => defaultDevices.find((d) => d.model === 'nvme' && d.slot === slot)!;

/** The built-in drivers and 'nvme-main': the NVMe driver in the host's main thread, its namespaces the driver's own objects. */
const withMainThreadNvme = withMainThread(nvmeDriver);

/** A namespace of a driver in its own thread: the host's proxy. */
async function namespace(r: Run, name: string): Promise<BlockProxy> {
  const device = await r.host.blockDevice(name, 120_000);
  if (!(device instanceof BlockProxy)) throw new Error(`${name} is not a proxy of a driver thread's block device`);
  return device;
}

/** A namespace of the driver in the main thread ('nvme-main'): the NvmeNamespace itself. */
async function ownNamespace(r: Run, name: string): Promise<NvmeNamespace> {
  const device = await r.host.blockDevice(name, 120_000);
  if (!(device instanceof NvmeNamespace)) throw new Error(`${name} is not an NVMe namespace in this thread`);
  return device;
}

/** `work`, or an error saying what was still pending after `ms`. */
async function bounded<T>(ms: number, what: () => string, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([work, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what()}`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** A run whose devices the test reaches, for their bus_dma and IOVA space (a driver's tags reach neither). */
function runOpened(t: Parameters<typeof run>[0], config: unknown, options: RunOptions = {}, openOptions: Parameters<typeof PciDevice.open>[1] = {}): { r: Run; opened: (address: PciAddress) => PciDevice } {
  const devices = new Map<PciAddress, PciDevice>();
  const r = run(t, config, {
    ...options,
    open: (address) => {
      const device = PciDevice.open(address, openOptions);
      devices.set(address, device);
      return device;
    },
  });
  const opened = (address: PciAddress) => {
    const device = devices.get(address);
    if (device === undefined) throw new Error(`the host never opened ${address}`);
    return device;
  };
  return { r, opened };
}

const submitted = (ns: NvmeNamespace) => ns.controller.ioQueues.reduce((n, q) => n + q.submitted, 0);

test.serial('two controllers in one host, one driver in its own thread, one in the main thread: Identify matches the QEMU command line; 64 MiB of mixed-size I/O across threads reads back and the backing file holds the same bytes; bad input never reaches the controller; unregistered memory makes no map; a DMA to a freed IOVA faults', async (t) => {
  // What the host asks of the kernel to give the controllers back, with bus mastering as sysfs has it then.
  const records: PortRecord[] = [];
  const kernel = recordingPort(defaultKernelPort(), records, (f) => sysfsBusMaster(f.address));
  const { r, opened } = runOpened(t, {
    devices: [
      { address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 2, queueDepth: 64 } },
      { address: NVME1, name: 'nvme1', driver: 'nvme-main', options: { ioQueues: 1, polled: true } },
    ],
  }, { registry: withMainThreadNvme }, { port: kernel });
  const ns1 = await namespace(r, 'nvme0n1');
  const ns2 = await namespace(r, 'nvme0n2');
  const other = await ownNamespace(r, 'nvme1n1');
  t.true(r.events.some((e) => e.type === 'thread' && e.address === NVME0), 'nvme0\'s driver runs in a thread of its own');
  t.false(r.events.some((e) => e.type === 'thread' && e.address === NVME1), 'nvme1\'s in the main thread');

  // --- Identify against vm/bench.ts's command line (nvme0's from the driver's note: its controller is in its thread).
  const line0 = benchNvme('07.0');
  const isIdentify = (e: (typeof r.events)[number]) => e.type === 'note' && e.address === NVME0 && / \(serial /.test(e.message);
  // The driver thread posts its note after it provided the namespaces: it may come after them.
  await r.until('nvme0\'s Identify note', (events) => events.some(isIdentify), 30_000);
  const identified = r.events.find(isIdentify);
  const note = identified?.type === 'note' ? identified.message : '';
  const [, model, serial, namespaces] = /^(.*) \(serial ([^,]+), firmware [^)]*\): .*namespaces (.*)$/.exec(note) ?? [];
  t.is(serial, /serial=([^,]+)/.exec(line0.props!)![1]!, note);
  t.is(model, 'QEMU NVMe Ctrl', 'QEMU 7.2 has no model property: its fixed model number');
  t.deepEqual([...(namespaces ?? '').matchAll(/(\d+) \(/g)].map((m) => Number(m[1])), [1, 2]);
  t.is(ns1.blockSize, 512);
  t.is(ns1.blockCount * ns1.blockSize, line0.namespaces![0]!.sizeMiB * MiB);
  t.is(ns2.blockSize, 4096, 'logical_block_size=4096');
  t.is(ns2.blockCount * ns2.blockSize, line0.namespaces![1]!.sizeMiB * MiB);
  t.is(other.controller.identity.serial, 'upci-nvme1');
  t.is(other.blockCount * other.blockSize, benchNvme('0a.0').namespaces![0]!.sizeMiB * MiB);

  // --- 64 MiB across the namespace in pieces of 4 KiB to 1 MiB, written out of order, half from shared memory (no copy).
  const total = ns1.blockCount * ns1.blockSize;
  t.is(total, 64 * MiB);
  const expected = fill(new Uint8Array(total), 0x5eed);
  const writes = pieces(total, 1);
  const order = writes.map((_, i) => i).sort((a, b) => ((a * 2654435761) >>> 0) - ((b * 2654435761) >>> 0));
  let started = performance.now();
  await parallel(order, 8, async (i) => {
    const { offset, length } = writes[i]!;
    let data = expected.subarray(offset, offset + length);
    if (i % 2 === 0) {
      const shared = new Uint8Array(allocShared(length));
      shared.set(data);
      data = shared;
    }
    await ns1.write(offset / 512, data);
  });
  await ns1.flush();
  t.log(`wrote ${writes.length} pieces (${total / MiB} MiB) in ${Math.round(performance.now() - started)} ms`);
  started = performance.now();
  const back = new Uint8Array(total);
  const reads = pieces(total, 2);
  await parallel(reads, 8, async ({ offset, length }, i) => {
    if (i % 2 === 0) {
      back.set(await ns1.read(offset / 512, length / 512), offset);
    } else {
      const shared = new Uint8Array(allocShared(length));
      await ns1.read(offset / 512, length / 512, shared);
      back.set(shared, offset);
    }
  });
  t.log(`read ${reads.length} pieces in ${Math.round(performance.now() - started)} ms`);
  t.is(sha256(back), sha256(expected), 'what was read is what was written');
  t.is(sha256(readFileSync(join(OUT, 'nvme0n1.img'))), sha256(expected), 'the host\'s backing file holds the same bytes');

  // The other controller (polled) and the other namespace work alongside.
  const small = fill(new Uint8Array(256 * 1024), 7);
  await Promise.all([other.write(10, small), ns2.write(ns2.blockCount - 64, small)]);
  t.is(sha256(await other.read(10, small.length / other.blockSize)), sha256(small));
  t.is(sha256(await ns2.read(ns2.blockCount - 64, 64)), sha256(small));

  // --- Bad input: a typed error naming the problem, and nothing submitted: refused in this thread before the
  // ring (the proxy), and in the driver before the controller (nvme1, whose controller this thread sees).
  const bad = (device: BlockDevice): [string, () => Promise<unknown>, RegExp][] => [
    ['past the end', () => device.read(device.blockCount - 1, 2), /run past the end of the namespace/],
    ['write past the end', () => device.write(device.blockCount, new Uint8Array(512)), /run past the end/],
    ['wrong buffer size', () => device.read(0, 2, new Uint8Array(1000)), /the buffer holds 1000 bytes; 2 blocks are 1024 bytes/],
    ['partial block', () => device.write(0, new Uint8Array(700)), /not a whole number of 512-byte blocks/],
    ['zero-length read', () => device.read(0, 0), /zero-length request/],
    ['zero-length write', () => device.write(0, new Uint8Array(0)), /zero-length request/],
    ['negative LBA', () => device.read(-1, 1), /not a non-negative integer/],
    ['fractional LBA', () => device.read(1.5, 1), /not a non-negative integer/],
  ];
  const refusals = async (device: BlockProxy | NvmeNamespace, sent: () => number) => {
    const before = sent();
    const refused = device.refused;
    for (const [what, call, message] of bad(device)) {
      const e = await t.throwsAsync(call(), { code: 'OUT_OF_RANGE', message }, `${device.name}: ${what}`);
      t.truthy(e && /fix:/.test(e.message), `${device.name}: ${what}: the error says how to fix it`);
    }
    t.is(device.refused - refused, bad(device).length);
    t.is(sent(), before, `${device.name}: no refused request went on`);
  };
  await refusals(ns1, () => ns1.posted);
  await refusals(other, () => submitted(other));

  // --- Unregistered shared memory goes through the bounce buffers: no map of its own, not even for a moment, while
  // other commands are in flight, bus mastering on throughout (on nvme1, whose driver runs in this thread: its
  // bus_dma is the one of the device the host opened here). Registered memory: test/vm/registered.test.ts.
  const nvme1 = opened(NVME1);
  const dma = BusDma.forDevice(nvme1);
  const mappings = dma.mappingCount;
  const probe = fill(new Uint8Array(MiB), 99);
  await other.write(0, probe);
  let mapsPeak = 0;
  await parallel(Array.from({ length: 64 }, (_, i) => i), 16, async (i) => {
    const length = 4096 * (1 + (i % 64));
    const into = new Uint8Array(allocShared(length));
    const pending = other.read(0, length / 512, into);
    mapsPeak = Math.max(mapsPeak, dma.mappingCount - mappings);
    await pending;
    if (!busMaster(NVME1)) t.fail(`bus mastering went off during read ${i}`);
    if (sha256(into) !== sha256(probe.subarray(0, length))) t.fail(`read ${i} differs`);
  });
  t.is(mapsPeak, 0, 'no request made a map: unregistered memory is bounced');
  t.is(dma.mappingCount, mappings);

  // --- A device told to DMA to a freed IOVA faults in the IOMMU; nothing else changes.
  const stale = new Uint8Array(allocShared(4096)).fill(0xa5);
  const map = other.controller.tag.createMap(4096).load(stale.buffer as SharedArrayBuffer);
  const freedIova = map.busAddress(0);
  map.unload();
  t.true(iovaSpace(nvme1).isQuarantined(BigInt(freedIova)));
  const faultsBefore = dmarFaults().length;
  // QEMU 7.2's nvme ignores the DMA's failure for Identify (dma_buf_read's result is dropped) and completes it
  // successfully: what matters is that the IOMMU stopped the write.
  const outcome = await other.controller.adminCommand(ADMIN.IDENTIFY, 0, freedIova, 0, CNS.CONTROLLER, 0, 0).then(
    () => 'completed with success status',
    (e: unknown) => (e instanceof NvmeStatusError ? e.message : `not a typed error: ${String(e)}`),
  );
  t.log(`Identify into the freed IOVA 0x${freedIova.toString(16)}: ${outcome}`);
  t.notRegex(outcome, /not a typed error/);
  // Parsed, the address compared whole: nvme1's write to exactly the freed page (a substring would take 0x1000 in 0x10000).
  const atFreed = (f: DmarFault) => f.access === 'Write' && f.device === NVME1.slice(5) && f.addr === BigInt(freedIova);
  await until(`a DMAR fault at 0x${freedIova.toString(16)}`, () => dmarFaults().slice(faultsBefore).some(atFreed), 5_000).catch(() => undefined);
  const faults = dmarFaults().slice(faultsBefore);
  t.log(faults.map((f) => f.line).join('\n'));
  t.true(faults.some(atFreed), `a DMAR fault: nvme1 (${NVME1.slice(5)}) writing at exactly the freed IOVA 0x${freedIova.toString(16)}`);
  t.true(stale.every((b) => b === 0xa5), 'the freed buffer was not written');
  t.is(sha256(await other.read(0, 2048)), sha256(probe), 'the controller keeps working');
  t.is(sha256(await ns1.read(0, 8)), sha256(expected.subarray(0, 4096)), 'and the other, in its thread');
  t.false(r.events.some((e) => e.type === 'fault'), 'no driver fault');

  const mark = records.length;
  const report = await r.host.shutdown();
  t.deepEqual(report.devices.map((d) => [d.outcome.kind, d.released.error]), [['stopped', undefined], ['stopped', undefined]]);
  t.false(r.events.some((e) => e.type === 'note' && /detach failed/.test(e.message)), 'CC.SHN shutdown completed');
  // The reset and the last close clear bus mastering themselves: it is read before each, fd still open.
  for (const address of [bench.nvme, bench.nvme1]) {
    t.deepEqual(resetsAndCloses(records.slice(mark), address), [`${address} reset (bus master off)`, `${address} close (bus master off)`], `${address}: bus mastering off before the reset and the close`);
  }
});

test.serial('fault injection: the driver throws mid-I/O (INTx); after the supervised restart every acknowledged write reads back and the queue is usable', async (t) => {
  const r = run(t, {
    restart: { initialDelayMs: 50, maxDelayMs: 1000, maxRestarts: 2 },
    devices: [{ address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 1, queueDepth: 16, interrupt: 'intx', failAfterCompletions: 40 } }],
  });
  const first = await namespace(r, 'nvme0n1');
  const acknowledged: { lba: number; data: Uint8Array }[] = [];
  const failures: Error[] = [];
  const blocks = 128; // 64 KiB per write
  const progress = () => `${first.posted} posted to the driver thread; ${acknowledged.length} acknowledged, ${failures.length} failed`;
  await bounded(60_000, () => `the writes around the fault: ${progress()}`, parallel(Array.from({ length: 80 }, (_, i) => i), 4, async (i) => {
    const data = fill(new Uint8Array(blocks * 512), 1000 + i);
    const lba = i * blocks;
    try {
      await first.write(lba, data);
      acknowledged.push({ lba, data });
    } catch (e) {
      failures.push(e as Error);
    }
  }));
  t.log(`${acknowledged.length} writes acknowledged, ${failures.length} failed: ${[...new Set(failures.map((e) => e.name))].join(', ')}`);
  t.true(acknowledged.length >= 39, 'the writes before the fault were acknowledged');
  t.true(failures.length > 0, 'writes after the fault failed rather than hanging');
  await r.until('the restart', (e) => e.some((x) => x.type === 'state' && x.address === NVME0 && x.state === 'running' && x.incarnation === 1));
  t.true(r.events.some((e) => e.type === 'fault' && /fault injection/.test(e.fault.message)));
  const again = await namespace(r, 'nvme0n1');
  t.not(again, first, 'the restarted driver provides a new block device');
  await t.throwsAsync(first.read(0, 1), { instanceOf: BlockGoneError }, 'the old one refuses');
  for (const { lba, data } of acknowledged) {
    if (sha256(await again.read(lba, blocks)) !== sha256(data)) t.fail(`acknowledged write at LBA ${lba} did not survive`);
  }
  const fresh = fill(new Uint8Array(4096), 4242);
  await again.write(100_000, fresh);
  t.is(sha256(await again.read(100_000, 8)), sha256(fresh), 'the queue is usable after the restart');
  const report = await r.host.shutdown();
  t.is(report.devices[0]!.restarts, 1);
});

test.serial('a driver in its own thread uses the nvme driver\'s namespace (bus.blockDevice): rings between the two driver threads, what it wrote is on the disk for the host too, and its release stops its export', async (t) => {
  const TESTDEV = parsePciAddress(bench.testdev);
  // As a config naming the fixture's file would load it: a module a driver thread imports.
  rememberSource(diskUser, new URL('../fixtures/disk-user-driver.js', import.meta.url).href);
  const r = run(t, {
    devices: [
      { address: NVME0, name: 'svc', driver: 'nvme', options: { ioQueues: 1, queueDepth: 16 } },
      { address: TESTDEV, name: 'user', driver: 'disk-user' },
    ],
  }, { registry: new Map([...builtinDrivers, ['disk-user', diskUser]]) });
  const used = (e: Run['events']) => e.find((x) => x.type === 'note' && x.address === TESTDEV && x.message.startsWith('disk user:'));
  await r.until('the disk user\'s note', (e) => used(e) !== undefined, 240_000);
  const note = used(r.events) as Extract<Run['events'][number], { type: 'note' }>;
  t.regex(note.message, new RegExp(`^disk user: ${DISK} \\(\\d+ blocks of \\d+\\): wrote and read back ${2 * BLOCKS} blocks at LBA ${FIRST_LBA}, 0 bytes differ$`));
  const threads = new Map(r.events.flatMap((e) => (e.type === 'thread' ? [[e.address, e.threadId] as const] : [])));
  t.true(threads.has(NVME0) && threads.has(TESTDEV) && threads.get(NVME0) !== threads.get(TESTDEV), 'each driver in a thread of its own');
  const ns = await namespace(r, DISK);
  t.is(mismatches(await ns.read(FIRST_LBA, 2 * BLOCKS), FIRST_LBA, ns.blockSize), 0, 'the host reads, through its own export, what the other driver thread wrote');
  await r.until('the disk user to finish and be released', (e) => e.some((x) => x.type === 'released' && x.address === TESTDEV && x.outcome.kind === 'finished'));
  t.is(r.host.services.liveExports, 1, 'only the host\'s own export is left: the disk user\'s stopped at its release');
  t.false(r.events.some((e) => e.type === 'fault'), 'no driver fault');
  const report = await r.host.shutdown();
  t.deepEqual(report.devices.map((d) => d.outcome.kind), ['stopped', 'finished']);
});

/** The host's notes for `address` so far. */
const notes = (r: Run, address: string) => r.events.flatMap((e) => (e.type === 'note' && e.address === address ? [e] : []));

/** A config of nvme0 alone, driven in the main thread (the timeout tests read its controller's counters) with `options`. */
const mainThreadNvme0 = (options: Record<string, unknown>, supervision: Record<string, unknown> = {}) =>
  ({ ...supervision, devices: [{ address: NVME0, name: 'nvme0', driver: 'nvme-main', options }] });

/** Shuts the host down, nvme0 stopped after `restarts` supervised restarts; logs how long the test took. */
async function stoppedAfter(t: ExecutionContext, r: Run, restarts: number, testStarted: number): Promise<void> {
  const report = await r.host.shutdown();
  t.deepEqual(report.devices.map((d) => [d.outcome.kind, d.restarts]), [['stopped', restarts]]);
  t.log(`the test took ${Date.now() - testStarted} ms`);
}

test.serial('command timeout: a command the controller never saw (dropSubmission) gets an Abort, then a controller reset re-issues it; it and the commands in flight around it complete with the right data, no map stays loaded, the queue is usable after', async (t) => {
  const timeoutMs = 1500;
  const testStarted = Date.now();
  const { r, opened } = runOpened(t, mainThreadNvme0({ ioQueues: 1, queueDepth: 16, commandTimeoutMs: timeoutMs, dropSubmission: 24 }), { registry: withMainThreadNvme });
  const ns = await ownNamespace(r, 'nvme0n1');
  const { controller } = ns;
  const queue = controller.ioQueues[0]!;
  const dma = BusDma.forDevice(opened(NVME0));
  const mappings = dma.mappingCount;
  const blocks = 128; // 64 KiB per request
  const bytes = blocks * 512;
  const requests: { what: string; started: number; ended: number }[] = [];
  const wrong: string[] = [];
  const failures: string[] = [];
  let stop = false;
  const progress = () => `submitted ${queue.submitted}, completed ${queue.completed}, outstanding ${queue.outstanding}; aborts ${controller.aborts}, resets ${controller.resets}; ${requests.length} requests done; notes: ${notes(r, NVME0).map((n) => n.message).join(' | ')}`;
  /** Times one request; a rejection is recorded (the contract says the lost command completes, so none may fail). */
  const timed = async <T>(what: string, request: () => Promise<T>): Promise<T | undefined> => {
    const started = Date.now();
    try {
      return await request();
    } catch (e) {
      failures.push(`${what}: ${(e as Error).name}: ${(e as Error).message}`);
      return undefined;
    } finally {
      requests.push({ what, started, ended: Date.now() });
    }
  };
  // Eight workers keep the queue busy, each writing its own 256 KiB region and reading back what it wrote, half of
  // the requests over shared memory (a per-request map each), until the controller reset is over.
  const worker = async (w: number) => {
    const source = new Uint8Array(allocShared(bytes));
    const into = new Uint8Array(allocShared(bytes));
    for (let round = 0; !stop; round++) {
      const lba = 8192 + w * 512 + (round % 4) * blocks;
      const direct = (w + round) % 2 === 0;
      const data = fill(direct ? source : new Uint8Array(bytes), 7000 + w * 1000 + round);
      await timed(`worker ${w} round ${round}: write at ${lba}`, () => ns.write(lba, data));
      const back = await timed(`worker ${w} round ${round}: read at ${lba}`, () => (direct ? ns.read(lba, blocks, into) : ns.read(lba, blocks)));
      if (back !== undefined && sha256(back) !== sha256(data)) wrong.push(`worker ${w} round ${round} at LBA ${lba}`);
    }
  };
  const workers = Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
  try {
    await r.until('the controller reset after the dropped command\'s Abort', (events) => events.some((e) => e.type === 'note' && /controller reset done/.test(e.message)), 8 * timeoutMs + 20_000);
  } finally {
    stop = true;
    await bounded(10_000, () => `the workers to finish their rounds: ${progress()}`, workers);
  }
  const log = notes(r, NVME0);
  for (const n of log.slice(1)) t.log(`note: ${n.message}`);
  const resetAt = log.find((n) => /controller reset: /.test(n.message))!.at;
  const resetDoneAt = log.find((n) => /controller reset done/.test(n.message))!.at;
  // The dropped command, by the fault injection's record: what it was (opcode, command id, queue, LBA).
  const drop = log.find((n) => n.message.startsWith('fault injection: dropping'));
  const [, op, which, lba] = /dropping (Write|Read) \((command \d+ on queue \d+)\), LBA (\d+)/.exec(drop?.message ?? '') ?? [];
  t.truthy(which, `the fault injection named the command it dropped: ${drop?.message}`);
  // Its request: a worker's of that opcode and LBA, submitted before the drop and answered after the reset re-issued it.
  const lost = requests.filter((q) => q.what.endsWith(`: ${op?.toLowerCase()} at ${lba}`) && q.started <= drop!.at && q.ended >= resetDoneAt);
  const across = requests.filter((q) => q.started < resetAt && q.ended >= resetAt && !lost.includes(q));
  t.log(`${requests.length} requests; the dropped one: ${lost.map((q) => `${q.what} in ${q.ended - q.started} ms`).join(', ')}; ${across.length} others in flight when the reset began`);
  t.deepEqual(failures, [], 'no request failed: the lost command was re-issued and completed');
  t.deepEqual(wrong, [], 'every read returned what its worker wrote');
  t.is(lost.length, 1, `one request is the dropped ${op} at LBA ${lba}: submitted before the drop, answered after the reset`);
  t.true(across.length >= 1, 'other requests were in flight on the same queue when the reset began');
  t.is(controller.aborts, 1, 'one Abort');
  t.is(controller.resets, 1, 'one controller reset');
  t.is(controller.timedOut, 0, 'nothing failed with NvmeTimeoutError');
  const said = log.map((n) => n.message).join('\n');
  t.true(said.includes(`${op} (${which}) not completed within ${timeoutMs} ms: Abort sent`), 'the timeout is the dropped command\'s, by opcode and command id');
  t.true(said.includes(`controller reset: ${op} (${which}) not completed after an Abort`), 'the reset is for the dropped command, by opcode and command id');
  const reissued = /(\d+) command\(s\) submitted again/.exec(log.map((n) => n.message).join('\n'));
  t.true(reissued !== null && Number(reissued[1]) >= 1, 'the reset re-issued the lost command');
  t.is(queue.outstanding, 0);
  t.is(dma.mappingCount, mappings, 'every per-request map was unloaded, the re-issued ones too');
  const fresh = fill(new Uint8Array(256 * 1024), 4343);
  await ns.write(60_000, fresh);
  t.is(sha256(await ns.read(60_000, fresh.length / 512)), sha256(fresh), 'the queue is usable after the reset');
  t.false(r.events.some((e) => e.type === 'fault'), 'no driver fault');
  await stoppedAfter(t, r, 0, testStarted);
});

test.serial('command timeout: a command the controller never completes (dropResubmissions) fails with NvmeTimeoutError at the second controller reset; the requests beside it complete, no map stays loaded, the queue is usable after', async (t) => {
  const timeoutMs = 1000;
  const testStarted = Date.now();
  const { r, opened } = runOpened(t, mainThreadNvme0({ ioQueues: 1, queueDepth: 8, commandTimeoutMs: timeoutMs, dropSubmission: 3, dropResubmissions: true }), { registry: withMainThreadNvme });
  const ns = await ownNamespace(r, 'nvme0n1');
  const { controller } = ns;
  const queue = controller.ioQueues[0]!;
  const dma = BusDma.forDevice(opened(NVME0));
  const mappings = dma.mappingCount;
  const blocks = 128;
  // Six writes submitted at once (each one command, in call order): the third is the one the controller never sees.
  const writes = Array.from({ length: 6 }, (_, i) => {
    const data = fill(i % 2 === 0 ? new Uint8Array(allocShared(blocks * 512)) : new Uint8Array(blocks * 512), 9000 + i);
    return { lba: 30_000 + i * blocks, data };
  });
  const started = Date.now();
  const settled = await bounded(6 * timeoutMs + 20_000, () => `the writes: submitted ${queue.submitted}, completed ${queue.completed}, outstanding ${queue.outstanding}; aborts ${controller.aborts}, resets ${controller.resets}`,
    Promise.allSettled(writes.map(({ lba, data }) => ns.write(lba, data))));
  const elapsed = Date.now() - started;
  for (const n of notes(r, NVME0).slice(1)) t.log(`note: ${n.message}`);
  t.log(`settled after ${elapsed} ms: ${settled.map((s) => s.status).join(', ')}`);
  t.deepEqual(settled.map((s) => s.status), ['fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled']);
  const error = (settled[2] as PromiseRejectedResult).reason as Error;
  t.is(error.name, 'NvmeTimeoutError');
  t.regex(error.message, new RegExp(`Write did not complete within ${timeoutMs} ms`));
  t.true(elapsed >= 3 * timeoutMs, 'it failed after an Abort, a reset and its re-issue timed out');
  t.is(controller.aborts, 1);
  t.is(controller.resets, 2, 'the first reset re-issued it, the second gave up on it');
  t.is(controller.timedOut, 1);
  t.regex(notes(r, NVME0).map((n) => n.message).join('\n'), /1 failed \(timed out after their re-issue\)/, 'the failure is reported');
  t.is(queue.outstanding, 0);
  t.is(dma.mappingCount, mappings, 'every per-request map was unloaded, the failed one\'s too');
  for (const [i, { lba, data }] of writes.entries()) {
    if (i !== 2) t.is(sha256(await ns.read(lba, blocks)), sha256(data), `write ${i} reads back`);
  }
  const fresh = fill(new Uint8Array(64 * 1024), 4444);
  await ns.write(writes[2]!.lba, fresh);
  t.is(sha256(await ns.read(writes[2]!.lba, blocks)), sha256(fresh), 'the queue is usable after, at the failed write\'s blocks too');
  t.false(r.events.some((e) => e.type === 'fault'), 'no driver fault');
  await stoppedAfter(t, r, 0, testStarted);
});

test.serial('command timeout: a controller reset that cannot finish (its Create I/O CQ dropped, dropAdminSubmission) is a driver fault; the host restarts the driver, the lost request fails with NvmeGoneError, the restarted driver serves', async (t) => {
  const timeoutMs = 1000;
  const testStarted = Date.now();
  // Admin commands after attach: 1 the Abort, 2 the reset's Set Features, 3 its Create I/O CQ.
  const r = run(t, mainThreadNvme0({ ioQueues: 1, queueDepth: 8, commandTimeoutMs: timeoutMs, dropSubmission: 2, dropAdminSubmission: 3 }, { restart: { initialDelayMs: 50, maxDelayMs: 1000, maxRestarts: 2 } }), { registry: withMainThreadNvme });
  const first = await ownNamespace(r, 'nvme0n1');
  // Admin commands are counted from the end of attach (Identify of the last namespace comes after the first is provided).
  await r.until('attach', (e) => e.some((x) => x.type === 'state' && x.address === NVME0 && x.state === 'running'));
  const blocks = 128;
  const writes = Array.from({ length: 3 }, (_, i) => ({ lba: 40_000 + i * blocks, data: fill(new Uint8Array(blocks * 512), 9500 + i) }));
  const settled = await bounded(6 * timeoutMs + 20_000, () => `the writes: aborts ${first.controller.aborts}, resets ${first.controller.resets}; events: ${r.events.filter((e) => e.type !== 'stats').map((e) => e.type).join(', ')}`,
    Promise.allSettled(writes.map(({ lba, data }) => first.write(lba, data))));
  t.deepEqual(settled.map((s) => s.status), ['fulfilled', 'rejected', 'fulfilled']);
  t.is(((settled[1] as PromiseRejectedResult).reason as Error).name, 'NvmeGoneError', 'the dropped write failed when the host took the controller back');
  await r.until('the restart', (e) => e.some((x) => x.type === 'state' && x.address === NVME0 && x.state === 'running' && x.incarnation === 1));
  for (const n of notes(r, NVME0)) t.log(`note: ${n.message}`);
  const faults = r.events.flatMap((e) => (e.type === 'fault' ? [e.fault.message] : []));
  t.is(faults.length, 1);
  t.regex(faults[0] ?? '', new RegExp(`Create I/O CQ \\(admin command \\d+\\) did not complete within ${timeoutMs} ms: the controller reset waiting for it cannot finish`));
  t.regex(notes(r, NVME0).map((n) => n.message).join('\n'), /controller reset: Write \(command \d+ on queue 1\) not completed after an Abort/);
  t.is(first.controller.resets, 1);
  const again = await ownNamespace(r, 'nvme0n1');
  t.not(again, first, 'the restarted driver provides a new block device');
  for (const i of [0, 2]) t.is(sha256(await again.read(writes[i]!.lba, blocks)), sha256(writes[i]!.data), `acknowledged write ${i} reads back`);
  const fresh = fill(new Uint8Array(blocks * 512), 4545);
  await again.write(writes[1]!.lba, fresh);
  t.is(sha256(await again.read(writes[1]!.lba, blocks)), sha256(fresh), 'the restarted driver serves');
  await stoppedAfter(t, r, 1, testStarted);
});

test.serial('command timeout: an admin command the controller never saw (dropAdminSubmission) makes a controller reset, which fails it with NvmeGoneError; I/O and admin commands work after', async (t) => {
  const timeoutMs = 1000;
  const testStarted = Date.now();
  const r = run(t, mainThreadNvme0({ ioQueues: 1, queueDepth: 8, commandTimeoutMs: timeoutMs, dropAdminSubmission: 1 }), { registry: withMainThreadNvme });
  const ns = await ownNamespace(r, 'nvme0n1');
  const { controller } = ns;
  await r.until('attach', (e) => e.some((x) => x.type === 'state' && x.address === NVME0 && x.state === 'running'));
  const identify = await bounded(4 * timeoutMs + 10_000, () => `the Identify: resets ${controller.resets}`,
    controller.identify(CNS.CONTROLLER, 0).then(() => undefined, (e: unknown) => e as Error));
  for (const n of notes(r, NVME0).slice(1)) t.log(`note: ${n.message}`);
  t.is(identify?.name, 'NvmeGoneError', 'the lost Identify failed when the reset took the old admin queue away');
  t.regex(notes(r, NVME0).map((n) => n.message).join('\n'), new RegExp(`controller reset: Identify \\(admin command \\d+\\) not completed within ${timeoutMs} ms`));
  t.is(controller.resets, 1);
  t.is(controller.aborts, 0, 'no Abort for an admin command');
  const data = fill(new Uint8Array(64 * 1024), 9700);
  await ns.write(50_000, data);
  t.is(sha256(await ns.read(50_000, data.length / 512)), sha256(data), 'I/O works after the reset');
  // Two at once: each gets its own data (they share the driver's one Identify page).
  const [identity, namespace1] = await Promise.all([controller.identify(CNS.CONTROLLER, 0), controller.identifyNamespace(1)]);
  t.is(decodeIdentifyController(identity, controller.cap.minPageSize).serial, controller.identity.serial, 'admin commands work after the reset');
  t.is(namespace1.blocks, ns.blockCount);
  t.false(r.events.some((e) => e.type === 'fault'), 'no driver fault');
  await stoppedAfter(t, r, 0, testStarted);
});

test.serial('NBD export: mkfs.ext4, mount, copy 20 MB of files, unmount, fsck -n clean, remount, checksums match; the host keeps running when the client disconnects', async (t) => {
  const r = run(t, { devices: [{ address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 2, queueDepth: 32 } }] });
  const ns = await namespace(r, 'nvme0n2');
  const socket = join(tmpdir(), 'upci-nbd.sock');
  const server = await NbdServer.listen(socket, [{ name: 'nvme0n2', device: ns }]);
  t.teardown(() => (server.closed ? undefined : server.close()));
  const nbd = '/dev/nbd0';
  const mnt = mkdtempSync(join(tmpdir(), 'upci-nbd-mnt-'));
  const src = mkdtempSync(join(tmpdir(), 'upci-nbd-src-'));
  const files = Array.from({ length: 20 }, (_, i) => ({ name: `file-${i}.bin`, data: fill(new Uint8Array(1_000_000 + i * 4096), 500 + i) }));
  for (const f of files) writeFileSync(join(src, f.name), f.data);

  await sh(t, 'nbd-client', ['-N', 'nvme0n2', '-b', String(ns.blockSize), '-u', socket, nbd]);
  let connected = true;
  try {
    await sh(t, 'mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=1,lazy_journal_init=1', nbd]);
    await sh(t, 'mount', ['-t', 'ext4', nbd, mnt]);
    await sh(t, 'cp', [...files.map((f) => join(src, f.name)), mnt]);
    await sh(t, 'sync', []);
    await sh(t, 'umount', [mnt]);
    await sh(t, 'fsck.ext4', ['-n', '-f', nbd]);
    await sh(t, 'mount', ['-t', 'ext4', '-o', 'ro', nbd, mnt]);
    // Asynchronous reads only: this process serves the NBD device they go to (a sync read would deadlock it).
    for (const f of files) t.is(sha256(await readFile(join(mnt, f.name))), sha256(f.data), `${f.name} after the remount`);
    t.deepEqual(await misplacedInImage(t, join(OUT, 'nvme0n2.img'), mnt, files), [],
      'every file\'s bytes are in the host\'s image (nvme0n2.img) where the file system put them');
    await sh(t, 'umount', [mnt]);
    await sh(t, 'nbd-client', ['-d', nbd]);
    connected = false;
  } finally {
    if (connected) await sh(t, 'nbd-client', ['-d', nbd]).catch(() => undefined);
  }
  // The client went away; the host, its driver and the export did not.
  await r.until('the server to see the disconnect', () => server.lastDisconnect !== undefined, 30_000);
  t.log(`server: ${JSON.stringify(server.stats)}, last disconnect: ${server.lastDisconnect}`);
  t.true(server.stats.requests > 100, 'the kernel did its I/O through the export');
  t.is(server.stats.errors, 0);
  t.false(r.events.some((e) => e.type === 'fault'), 'no driver fault');
  t.true((await ns.read(0, 1)).length === ns.blockSize, 'the block device still serves');
  const report = await r.host.shutdown();
  t.deepEqual(report.devices.map((d) => d.outcome.kind), ['stopped']);
  await bounded(10_000, () => 'the NBD server to close', server.close());
  // What could still keep this process alive (a run once did not exit after this test).
  const describe = (h: object) => {
    const named = h as { constructor: { name: string }; address?: () => unknown; fd?: number; _handle?: { fd?: number }; _pendingData?: unknown; remoteAddress?: string };
    const where = typeof named.address === 'function' ? JSON.stringify(named.address()) : `fd ${named._handle?.fd ?? named.fd ?? '?'}`;
    return `${named.constructor.name}(${where})`;
  };
  t.log(`active handles after the test: ${(process as unknown as { _getActiveHandles(): object[] })._getActiveHandles().map(describe).join(', ') || 'none'}`);
  t.log(`active resources: ${process.getActiveResourcesInfo().join(', ')}`);
});

// A run once did not exit after all tests passed: say what is still pending when ava is done with them.
test.after.always(() => {
  const pending = process.getActiveResourcesInfo();
  console.error(`nvme.test: resources still active after the last test: ${pending.join(', ') || 'none'}`);
  setTimeout(() => console.error(`nvme.test: still running 10 s after the last test: ${process.getActiveResourcesInfo().join(', ')}`), 10_000).unref();
});

