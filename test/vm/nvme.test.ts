/**
 * The NVMe driver in the VM, on QEMU's nvme controllers (vm/bench.ts: nvme0
 * with two namespaces, nvme1 with one, raw images in the run's out dir):
 * Identify against the command line, 64 MiB of mixed-size I/O checked
 * against the host's backing file, bad input refused before the controller,
 * per-request maps unloaded while the controller works and a DMA to a freed
 * IOVA faulting in the IOMMU, two controllers in one host, and a driver
 * crash mid-I/O under supervision.
 */
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdServer } from '../../actors/nbd-server.js';
import type { BlockDevice } from '../../drivers/block.js';
import { NvmeNamespace } from '../../drivers/nvme/namespace.js';
import { NvmeStatusError } from '../../drivers/nvme/errors.js';
import { ADMIN, CNS } from '../../drivers/nvme/registers.js';
import { parsePciAddress, type PciAddress } from '../../kernel/pci-address.js';
import { BusDma } from '../../pci/bus-dma.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../pci/config.js';
import { PciDevice } from '../../pci/device.js';
import { allocShared } from '../../shm/mapping.js';
import { defaultDevices } from '../../vm/bench.js';
import { bench, iovaSpace, sysfsConfig } from './devices.js';
import { run, type Run } from './host-run.js';

const NVME0 = parsePciAddress(bench.nvme);
const NVME1 = parsePciAddress(bench.nvme1);
const OUT = process.env.UPCI_VM_OUT ?? '/tmp/upci-out';
const MiB = 1024 * 1024;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const busMaster = (address: string) => (sysfsConfig(address).readUInt16LE(PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;

function kernelLog(): string {
  try {
    return execFileSync('dmesg', { encoding: 'utf8' });
  } catch {
    return execFileSync('busybox', ['dmesg'], { encoding: 'utf8' });
  }
}

/** xorshift32: the same pseudo-random bytes for a seed, without Math.random. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function fill(bytes: Uint8Array, seed: number): Uint8Array {
  const next = prng(seed);
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = next();
  return bytes;
}

/** Cuts [0, total) into pieces of 4 KiB to 1 MiB (multiples of 4 KiB), pseudo-randomly. */
function pieces(total: number, seed: number): { offset: number; length: number }[] {
  const next = prng(seed);
  const out: { offset: number; length: number }[] = [];
  for (let at = 0; at < total;) {
    const length = Math.min(total - at, 4096 * (1 + (next() % 256)));
    out.push({ offset: at, length });
    at += length;
  }
  return out;
}

/** Runs `jobs` with at most `width` in flight. */
async function parallel<T>(items: readonly T[], width: number, job: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) {
      const i = next++;
      await job(items[i]!, i);
    }
  }));
}

const benchNvme = (slot: string) => defaultDevices.find((d) => d.model === 'nvme' && d.slot === slot)!;

async function namespace(r: Run, name: string): Promise<NvmeNamespace> {
  const device = await r.host.blockDevice(name, 60_000);
  if (!(device instanceof NvmeNamespace)) throw new Error(`${name} is not an NVMe namespace`);
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

const submitted = (ns: NvmeNamespace) => ns.controller.ioQueues.reduce((n, q) => n + q.submitted, 0);

test.serial('two controllers in one host: Identify matches the QEMU command line; 64 MiB of mixed-size I/O reads back and the backing file holds the same bytes; bad input never reaches the controller; maps unload while the controller works; a DMA to a freed IOVA faults', async (t) => {
  // The host's devices, for their bus_dma and IOVA space (a driver's tags reach neither).
  const opened = new Map<PciAddress, PciDevice>();
  const r = run(t, {
    devices: [
      { address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 2, queueDepth: 64 } },
      { address: NVME1, name: 'nvme1', driver: 'nvme', options: { ioQueues: 1, polled: true } },
    ],
  }, {
    open: (address) => {
      const device = PciDevice.open(address);
      opened.set(address, device);
      return device;
    },
  });
  const ns1 = await namespace(r, 'nvme0n1');
  const ns2 = await namespace(r, 'nvme0n2');
  const other = await namespace(r, 'nvme1n1');

  // --- Identify against vm/bench.ts's command line.
  const line0 = benchNvme('07.0');
  t.is(ns1.controller.identity.serial, /serial=([^,]+)/.exec(line0.props!)![1]!);
  t.is(ns1.controller.identity.model, 'QEMU NVMe Ctrl', 'QEMU 7.2 has no model property: its fixed model number');
  t.deepEqual(ns1.controller.namespaceIds, [1, 2]);
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

  // --- Bad input: a typed error naming the problem, and nothing submitted.
  const before = submitted(ns1);
  const refused = ns1.refused;
  const bad: [string, () => Promise<unknown>, RegExp][] = [
    ['past the end', () => ns1.read(ns1.blockCount - 1, 2), /run past the end of the namespace/],
    ['write past the end', () => ns1.write(ns1.blockCount, new Uint8Array(512)), /run past the end/],
    ['wrong buffer size', () => ns1.read(0, 2, new Uint8Array(1000)), /the buffer holds 1000 bytes; 2 blocks are 1024 bytes/],
    ['partial block', () => ns1.write(0, new Uint8Array(700)), /not a whole number of 512-byte blocks/],
    ['zero-length read', () => ns1.read(0, 0), /zero-length request/],
    ['zero-length write', () => ns1.write(0, new Uint8Array(0)), /zero-length request/],
    ['negative LBA', () => ns1.read(-1, 1), /not a non-negative integer/],
    ['fractional LBA', () => ns1.read(1.5, 1), /not a non-negative integer/],
  ];
  for (const [what, call, message] of bad) {
    const e = await t.throwsAsync(call(), { code: 'OUT_OF_RANGE', message }, what);
    t.truthy(e && /fix:/.test(e.message), `${what}: the error says how to fix it`);
  }
  t.is(ns1.refused - refused, bad.length);
  t.is(submitted(ns1), before, 'no refused request reached the controller');

  // --- Per-request maps unloaded at completion while other commands are in flight, bus mastering on throughout.
  const nvme0 = opened.get(NVME0);
  if (nvme0 === undefined) throw new Error('the host never opened nvme0');
  const dma = BusDma.forDevice(nvme0);
  const mappings = dma.mappingCount;
  const probe = fill(new Uint8Array(MiB), 99);
  await ns1.write(0, probe);
  let inFlightPeak = 0;
  await parallel(Array.from({ length: 64 }, (_, i) => i), 16, async (i) => {
    const length = 4096 * (1 + (i % 64));
    const into = new Uint8Array(allocShared(length));
    const pending = ns1.read(0, length / 512, into);
    inFlightPeak = Math.max(inFlightPeak, dma.mappingCount - mappings);
    await pending;
    if (!busMaster(NVME0)) t.fail(`bus mastering went off during read ${i}`);
    if (sha256(into) !== sha256(probe.subarray(0, length))) t.fail(`read ${i} differs`);
  });
  t.true(inFlightPeak > 1, `several per-request maps were loaded at once (peak ${inFlightPeak})`);
  t.is(dma.mappingCount, mappings, 'every per-request map was unloaded at its completion');
  t.true(iovaSpace(nvme0).quarantined > 0, 'their IOVAs are in quarantine');

  // --- A device told to DMA to a freed IOVA faults in the IOMMU; nothing else changes.
  const stale = new Uint8Array(allocShared(4096)).fill(0xa5);
  const map = ns1.controller.tag.createMap(4096).load(stale.buffer as SharedArrayBuffer);
  const freedIova = map.busAddress(0);
  map.unload();
  t.true(iovaSpace(nvme0).isQuarantined(BigInt(freedIova)));
  const faultsBefore = kernelLog().split('\n').filter((l) => l.includes(`fault addr 0x${freedIova.toString(16)}`)).length;
  // QEMU 7.2's nvme ignores the DMA's failure for Identify (dma_buf_read's result is dropped) and completes it
  // successfully: what matters is that the IOMMU stopped the write.
  const outcome = await ns1.controller.adminCommand(ADMIN.IDENTIFY, 0, freedIova, 0, CNS.CONTROLLER, 0, 0).then(
    () => 'completed with success status',
    (e: unknown) => (e instanceof NvmeStatusError ? e.message : `not a typed error: ${String(e)}`),
  );
  t.log(`Identify into the freed IOVA 0x${freedIova.toString(16)}: ${outcome}`);
  t.notRegex(outcome, /not a typed error/);
  let faults = 0;
  for (let i = 0; i < 100 && faults <= faultsBefore; i++) {
    faults = kernelLog().split('\n').filter((l) => l.includes(`fault addr 0x${freedIova.toString(16)}`)).length;
    if (faults <= faultsBefore) await sleep(50);
  }
  t.true(faults > faultsBefore, `a DMAR fault was logged at 0x${freedIova.toString(16)}`);
  t.true(stale.every((b) => b === 0xa5), 'the freed buffer was not written');
  t.is(sha256(await ns1.read(0, 2048)), sha256(probe), 'the controller keeps working');
  t.false(r.events.some((e) => e.type === 'fault'), 'no driver fault');

  const report = await r.host.shutdown();
  t.deepEqual(report.devices.map((d) => [d.outcome.kind, d.released.error]), [['stopped', undefined], ['stopped', undefined]]);
  t.false(r.events.some((e) => e.type === 'note' && /detach failed/.test(e.message)), 'CC.SHN shutdown completed');
  t.false(busMaster(NVME0));
});

test.serial('fault injection: the driver throws mid-I/O (INTx); after the supervised restart every acknowledged write reads back and the queue is usable', async (t) => {
  const r = run(t, {
    restart: { initialDelayMs: 50, maxDelayMs: 1000, maxRestarts: 2 },
    devices: [{ address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 1, queueDepth: 16, interrupt: 'intx', failAfterCompletions: 40 } }],
  });
  const first: BlockDevice = await namespace(r, 'nvme0n1');
  const acknowledged: { lba: number; data: Uint8Array }[] = [];
  const failures: Error[] = [];
  const blocks = 128; // 64 KiB per write
  const queue = (first as NvmeNamespace).controller.ioQueues[0]!;
  const progress = () => `submitted ${queue.submitted}, completed ${queue.completed}, outstanding ${queue.outstanding}; ${acknowledged.length} acknowledged, ${failures.length} failed`;
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
  await t.throwsAsync(first.read(0, 1), { name: 'NvmeGoneError' }, 'the old one refuses');
  for (const { lba, data } of acknowledged) {
    if (sha256(await again.read(lba, blocks)) !== sha256(data)) t.fail(`acknowledged write at LBA ${lba} did not survive`);
  }
  const fresh = fill(new Uint8Array(4096), 4242);
  await again.write(100_000, fresh);
  t.is(sha256(await again.read(100_000, 8)), sha256(fresh), 'the queue is usable after the restart');
  const report = await r.host.shutdown();
  t.is(report.devices[0]!.restarts, 1);
});

/** Runs a program to completion without blocking this process's event loop (it serves the NBD device the program uses). */
function sh(t: { log(...v: unknown[]): void }, command: string, args: readonly string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')} did not finish within ${timeoutMs} ms:\n${out}`));
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      t.log(`$ ${command} ${args.join(' ')} -> ${code ?? signal}${out.trim() ? `\n${out.trim()}` : ''}`);
      if (code === 0) resolve(out);
      else reject(new Error(`${command} ${args.join(' ')} exited with ${code ?? signal}:\n${out}`));
    });
  });
}

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

