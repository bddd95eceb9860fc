/**
 * Registered memory on QEMU's nvme controllers (drivers/block.ts
 * RegisteredBuffer): 10,000 requests on registered buffers, with the driver
 * in the main thread and in its own thread (through the block service's
 * rings), make no VFIO_IOMMU_MAP_DMA or UNMAP_DMA at all, counted by a
 * kernel port that sees every thread's calls (test/support/counting-port.ts);
 * what they wrote reads back. The main thread's heap does not grow per
 * I/O on the registered path, either way (the allocation meter of
 * vm/benchmarks over 20,000 reads): what it may allocate is bounded by the
 * meter's noise, a fixed cost per ring wake-up and less than one heap
 * object per request (heapBound below; test/unit/registered-heap.test.ts
 * is the host's check of the cross-thread path).
 */
import test, { type ExecutionContext } from 'ava';
import { BlockProxy } from '../../services/block-service.js';
import type { BlockDevice, RegisteredBuffer } from '../../drivers/block.js';
import { withMainThread } from '../../vm/main-thread-drivers.js';
import { nvmeDriver } from '../../drivers/nvme/index.js';
import { NvmeNamespace } from '../../drivers/nvme/namespace.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { PciDevice } from '../../pci/device.js';
import { ringWakeUps } from '../../shm/ring.js';
import { startAllocationMeter } from '../../vm/benchmarks/allocation.js';
import { countingPort } from '../support/counting-port.js';
import { bench } from './devices.js';
import { run } from './host-run.js';

const NVME0 = parsePciAddress(bench.nvme);
const NVME1 = parsePciAddress(bench.nvme1);
const REQUEST = 4096;
const DEPTH = 32;

const withMainThreadNvme = withMainThread(nvmeDriver);

/** The words of the 4 KiB at `lba`, as the writes put them: a function of the LBA only. */
const word = (lba: number, i: number) => ((lba * 1024 + i) ^ 0x5a5a5a5a) >>> 0;

/**
 * `count` requests on `buffer`, DEPTH at a time, one lane per 4 KiB slice:
 * writes of each LBA's pattern, or reads checked against it. LBAs go round
 * the first `slots` 4 KiB blocks. Resolves with the reads that differed.
 */
function requests(device: BlockDevice, buffer: RegisteredBuffer, op: 'read' | 'write', count: number, slots: number): Promise<number> {
  const blocks = REQUEST / device.blockSize;
  const words = new Uint32Array(buffer.bytes.buffer, buffer.bytes.byteOffset, buffer.bytes.length / 4);
  const laneLba = new Float64Array(DEPTH);
  let started = 0;
  let ended = 0;
  let differed = 0;
  return new Promise<number>((resolve, reject) => {
    // eslint-disable-next-line prefer-const
    let subscription: { unsubscribe(): void };
    const start = (lane: number) => {
      const lba = (started++ % slots) * blocks;
      laneLba[lane] = lba;
      const base = lane * 1024;
      if (op === 'write') for (let i = 0; i < 1024; i++) words[base + i] = word(lba, i);
      const ok = op === 'write' ? buffer.write(lba, blocks, lane * REQUEST, lane) : buffer.read(lba, blocks, lane * REQUEST, lane);
      if (!ok) {
        subscription.unsubscribe();
        reject(new Error(`the device had no room for lane ${lane}'s request with ${DEPTH} in flight`));
      }
    };
    subscription = buffer.ends.subscribe((end) => {
      if (end.error !== undefined) {
        subscription.unsubscribe();
        reject(end.error);
        return;
      }
      const lane = end.tag;
      if (op === 'read') {
        const lba = laneLba[lane]!;
        const base = lane * 1024;
        for (let i = 0; i < 1024; i++) {
          if (words[base + i] !== word(lba, i)) {
            differed++;
            break;
          }
        }
      }
      if (++ended === count) {
        subscription.unsubscribe();
        resolve(differed);
      } else if (started < count) {
        start(lane);
      }
    });
    for (let lane = 0; lane < DEPTH && started < count; lane++) start(lane);
  });
}

/** 10,000 requests (5,000 writes, 5,000 reads of them) on a registered buffer of `device`: no map or unmap between them. */
async function noMapsFor(t: ExecutionContext, device: BlockDevice, calls: () => { map: number; unmap: number }, where: string): Promise<RegisteredBuffer> {
  const slots = Math.min(2048, Math.floor(device.blockCount * device.blockSize / REQUEST));
  const before = calls();
  const buffer = device.allocBuffer(DEPTH * REQUEST);
  // The first requests also wait for the registration to reach the driver (across threads it is mapped there on arrival).
  t.is(await requests(device, buffer, 'write', DEPTH, slots), 0);
  const registered = calls();
  t.is(registered.map - before.map, 1, `${where}: registering made the one mapping, and the port counted it`);
  await requests(device, buffer, 'write', 5_000, slots);
  t.is(await requests(device, buffer, 'read', 5_000, slots), 0, `${where}: every read has what was written`);
  t.deepEqual(calls(), registered, `${where}: 10,000 requests on registered memory, no MAP_DMA or UNMAP_DMA`);
  return buffer;
}

/**
 * What this thread may allocate over a window of registered reads:
 * - noise: the meter's own start and stop (about 40 KiB in the profile),
 *   and the idle rings' and timers' periodic re-checks;
 * - perIo: 8 B per read, half the smallest heap object (a 16 B heap
 *   number), so anything made per request is over it; it also covers the
 *   interrupts delivered here, each reaping a batch (the interrupt
 *   watcher's native callback makes 57 B per callback on the host; the
 *   boot of 2026-12-06 saw 20 KB of it over 20,000 reads);
 * - perRingWakeUp: across threads, each wake-up of the completion ring's
 *   waiting consumer (Atomics.waitAsync's result, promise and reaction:
 *   558 B measured on the host, test/unit/registered-heap.test.ts).
 */
const heapBound = { noise: 128 * 1024, perIo: 8, perRingWakeUp: 640 };

/** Heap bytes on the registered path, in this thread, over `count` reads after as many to warm up; asserted within heapBound. */
async function heapPerIo(t: ExecutionContext, device: BlockDevice, buffer: RegisteredBuffer, count: number, where: string, interrupts: () => number): Promise<void> {
  const slots = Math.min(2048, Math.floor(device.blockCount * device.blockSize / REQUEST));
  await requests(device, buffer, 'read', count, slots);
  const interruptsBefore = interrupts();
  const wakeUpsBefore = ringWakeUps();
  const stop = startAllocationMeter(true);
  await requests(device, buffer, 'read', count, slots);
  const allocation = stop();
  const wakeUpsAfter = ringWakeUps();
  const interrupted = interrupts() - interruptsBefore;
  const woken = wakeUpsAfter.notified + wakeUpsAfter.recovered - wakeUpsBefore.notified - wakeUpsBefore.recovered;
  const allowed = heapBound.noise + heapBound.perIo * count + heapBound.perRingWakeUp * woken;
  t.log(`${where}: ${allocation.bytes} bytes in ${count} reads (${(allocation.bytes / count).toFixed(2)} B/I/O), ${interrupted} interrupts here and ${woken} ring wake-ups here (${(count / Math.max(1, interrupted + woken)).toFixed(1)} I/Os each), bound ${allowed}, ${allocation.collections} collections; sites: ${allocation.sites.slice(0, 8).map((s) => `${s.where} ${s.bytes}`).join('; ')}`);
  t.true(allocation.bytes <= allowed, `${where}: ${allocation.bytes} heap bytes over ${count} reads, above ${allowed} (${heapBound.noise} of noise, ${heapBound.perIo} per read, ${heapBound.perRingWakeUp} per ring wake-up): something allocates per request`);
}

test.serial('registered memory: 10,000 requests on registered buffers make no MAP_DMA or UNMAP_DMA, with the driver in this thread and in its own; the data reads back; the main thread\'s heap does not grow per I/O either way', async (t) => {
  const port = countingPort();
  const r = run(t, {
    // The host's own periodic work (stats sampling, the watchdog's checks) kept out of the measured windows.
    statsIntervalMs: 3_600_000,
    watchdogMs: 60_000,
    heartbeatMs: 10_000,
    devices: [
      { address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 1, queueDepth: 64 } },
      { address: NVME1, name: 'nvme1', driver: 'nvme-main', options: { ioQueues: 1, queueDepth: 64 } },
    ],
  }, { registry: withMainThreadNvme, open: (address) => PciDevice.open(address, { port }) });
  const own = await r.host.blockDevice('nvme1n1', 120_000);
  if (!(own instanceof NvmeNamespace)) throw new Error('nvme1n1 is not the namespace of a driver in this thread');
  const proxy = await r.host.blockDevice('nvme0n1', 120_000);
  if (!(proxy instanceof BlockProxy)) throw new Error('nvme0n1 is not a proxy of a driver thread\'s namespace');

  const inThread = await noMapsFor(t, own, () => port.calls(NVME1), 'driver in this thread');
  const acrossThreads = await noMapsFor(t, proxy, () => port.calls(NVME0), 'driver in its own thread');

  // Unregistered memory is bounced: no map either.
  const before = port.calls(NVME1);
  await own.read(0, REQUEST / own.blockSize, new Uint8Array(new SharedArrayBuffer(REQUEST)));
  t.deepEqual(port.calls(NVME1), before, 'an unregistered buffer makes no map');

  await heapPerIo(t, own, inThread, 20_000, 'driver in this thread', () => r.host.interruptCount(NVME1));
  await heapPerIo(t, proxy, acrossThreads, 20_000, 'driver in its own thread (this thread\'s side)', () => 0);
  inThread.unregister();
  acrossThreads.unregister();
  t.false(r.events.some((e) => e.type === 'fault'), 'no driver fault');
});
