/**
 * bus_dma in the VM, through edu's DMA engine behind the emulated VT-d IOMMU:
 * round trips, tag constraints, fault containment, the use-after-free rule
 * and mapping leaks.
 */
import test from 'ava';
import { randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { BusSpace } from '../../pci/bus-space.js';
import { BusDma, DmaConstraintError, DmaSync } from '../../pci/bus-dma.js';
import { PciDevice } from '../../pci/device.js';
import { allocShared } from '../../shm/mapping.js';
import { bench, dmarFaults, type DmarFault, EDU_CHUNK, eduDma, iovaSpace, sleepSync, sysfsBusMaster } from './devices.js';
import { defaultKernelPort } from '../../pci/kernel-port.js';
import { recordingPort, type PortRecord } from '../support/recording-port.js';
import { Interrupts } from '../../pci/intr.js';
import { eventQueue } from '../support/event-queue.js';
import { EDU } from '../../drivers/edu-registers.js';
import { within } from '../support/bounded.js';


function vmLckKiB(): number {
  const m = /^VmLck:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : NaN;
}

function withEdu<T>(use: (edu: PciDevice, bar: BusSpace, dma: BusDma) => T): T {
  const edu = PciDevice.open(bench.edu);
  try {
    return use(edu, edu.mapBar(0), BusDma.forDevice(edu));
  } finally {
    edu.close();
  }
}

test('edu: 4096 random bytes RAM → device → RAM round-trip exactly, at IOVAs below edu\'s 28-bit mask', (t) => {
  withEdu((_edu, bar, dma) => {
    const tag = dma.createTag({ alignment: 4096, addressLimit: EDU.DMA_LIMIT, maxSegments: 1 });
    const src = tag.allocMemory(4096);
    const dst = tag.allocMemory(4096);
    const data = randomFillSync(new Uint8Array(4096));
    new Uint8Array(src.buffer).set(data);
    const out = tag.createMap().load(src);
    const back = tag.createMap().load(dst);
    for (const s of [...out.segments, ...back.segments]) t.true(s.busAddress + BigInt(s.length) - 1n <= EDU.DMA_LIMIT, `0x${s.busAddress.toString(16)} is within 28 bits`);
    t.log(`IOVAs: src 0x${out.segments[0]!.busAddress.toString(16)}, dst 0x${back.segments[0]!.busAddress.toString(16)}`);

    dma.enableBusMaster();
    for (let at = 0; at < 4096; at += EDU_CHUNK) {
      const chunk = BigInt(at);
      out.sync(DmaSync.PREWRITE, at, EDU_CHUNK);
      eduDma(bar, out.segments[0]!.busAddress + chunk, EDU.BUFFER, EDU_CHUNK, false);
      out.sync(DmaSync.POSTWRITE, at, EDU_CHUNK);
      back.sync(DmaSync.PREREAD, at, EDU_CHUNK);
      eduDma(bar, EDU.BUFFER, back.segments[0]!.busAddress + chunk, EDU_CHUNK, true);
      back.sync(DmaSync.POSTREAD, at, EDU_CHUNK);
    }
    dma.disableBusMaster();

    t.deepEqual(new Uint8Array(dst.buffer), data);
    out.unload();
    back.unload();
    src.free();
    dst.free();

    // Memory at an IOVA edu cannot reach (it would silently mask the address) is refused by edu's tag.
    const wide = dma.createTag({ alignment: 1 << 28 });
    const high = wide.allocMemory(4096);
    const err = t.throws(() => tag.createMap().load(high), { instanceOf: DmaConstraintError });
    t.is(err?.constraint, 'addressLimit');
    t.is(err?.code, 'OUT_OF_RANGE');
    high.free();
  });
});

test('edu: a DMA started with its interrupt flag ends with the DMA-done interrupt, after the data landed', async (t) => {
  const edu = PciDevice.open(bench.edu);
  try {
    const bar = edu.mapBar(0);
    const dma = BusDma.forDevice(edu);
    const irq = Interrupts.establish(edu, { type: 'msi' });
    const tag = dma.createTag({ alignment: 4096, addressLimit: EDU.DMA_LIMIT, maxSegments: 1 });
    const src = tag.allocMemory(4096);
    const dst = tag.allocMemory(4096);
    const data = randomFillSync(new Uint8Array(EDU_CHUNK));
    new Uint8Array(src.buffer).set(data);
    const out = tag.createMap().load(src);
    const back = tag.createMap().load(dst);
    const events = eventQueue(irq.vector(0));
    // What an earlier user of the edu left raised (edu has no reset under VFIO) is acknowledged first, as a driver does.
    bar.write4(EDU.IRQ_ACK, bar.read4(EDU.IRQ_STATUS));
    dma.enableBusMaster();
    const transfer = async (from: bigint, to: bigint, toRam: boolean): Promise<number> => {
      const done = events.next();
      bar.write8(EDU.DMA_SRC, from);
      bar.write8(EDU.DMA_DST, to);
      bar.write4(EDU.DMA_COUNT, EDU_CHUNK);
      bar.write4(EDU.DMA_CMD, EDU.DMA_RUN | EDU.DMA_IRQ | (toRam ? EDU.DMA_TO_RAM : 0));
      // 30 s: the first interrupt also waits for the interrupt worker to start (over 5 s seen in a loaded guest).
      const event = await within(30_000, done, 'the DMA-done interrupt never arrived');
      const status = bar.read4(EDU.IRQ_STATUS);
      bar.write4(EDU.IRQ_ACK, status);
      event.ack();
      return status;
    };
    out.sync(DmaSync.PREWRITE);
    t.is(await transfer(out.segments[0]!.busAddress, EDU.BUFFER, false), EDU.IRQ_STATUS_DMA_DONE);
    back.sync(DmaSync.PREREAD);
    t.is(await transfer(EDU.BUFFER, back.segments[0]!.busAddress, true), EDU.IRQ_STATUS_DMA_DONE);
    back.sync(DmaSync.POSTREAD);
    t.deepEqual(new Uint8Array(dst.buffer, 0, EDU_CHUNK), data);
    t.is(irq.vector(0).stats().delivered, 2);
    events.stop();
  } finally {
    edu.close();
  }
});

test('edu: a boundary-constrained load is split into segments that the device fills one by one', (t) => {
  withEdu((_edu, bar, dma) => {
    const tag = dma.createTag({ alignment: 512, boundary: 0x1000, addressLimit: EDU.DMA_LIMIT });
    const mem = tag.allocMemory(8192);
    const pattern = randomFillSync(new Uint8Array(EDU_CHUNK));
    const staging = tag.allocMemory(4096);
    new Uint8Array(staging.buffer).set(pattern);
    const s = tag.createMap().load(staging);
    // 4096 bytes at offset 2048 cross the 4 KiB boundary: two segments of 2048.
    const loaded = tag.createMap().load(mem, 2048, 4096);
    t.deepEqual(loaded.segments.map((x) => x.length), [2048, 2048]);
    t.true(loaded.segments.every((x) => x.busAddress / 0x1000n === (x.busAddress + BigInt(x.length) - 1n) / 0x1000n));

    dma.enableBusMaster();
    s.sync(DmaSync.PREWRITE);
    eduDma(bar, s.segments[0]!.busAddress, EDU.BUFFER, EDU_CHUNK, false);
    loaded.sync(DmaSync.PREREAD);
    // Each segment gets the same 2 KiB from edu's buffer.
    for (const seg of loaded.segments) eduDma(bar, EDU.BUFFER, seg.busAddress, seg.length, true);
    loaded.sync(DmaSync.POSTREAD);
    dma.disableBusMaster();

    const bytes = new Uint8Array(mem.buffer);
    t.deepEqual(bytes.subarray(2048, 4096), pattern);
    t.deepEqual(bytes.subarray(4096, 6144), pattern);
    t.true(bytes.subarray(0, 2048).every((b) => b === 0) && bytes.subarray(6144).every((b) => b === 0), 'nothing outside the loaded range changed');
  });
});


test('fault containment: edu told to DMA into the guard page after a buffer and to a wild IOVA faults in the IOMMU at each; no byte of memory changes; process alive', (t) => {
  withEdu((_edu, bar, dma) => {
    const tag = dma.createTag({ alignment: 4096, addressLimit: EDU.DMA_LIMIT });
    const canary = tag.allocMemory(3 * 4096);
    const canaryView = new Uint8Array(canary.buffer);
    canaryView.fill(0x5a);
    const loadedCanary = tag.createMap().load(canary);
    // Allocated next: without a guard page it would sit right after the canary, where the bad DMA goes.
    const neighbour = tag.allocMemory(4096);
    const neighbourView = new Uint8Array(neighbour.buffer);
    neighbourView.fill(0x11);
    const loadedNeighbour = tag.createMap().load(neighbour);
    const source = tag.allocMemory(4096);
    new Uint8Array(source.buffer).fill(0xee);
    const loadedSource = tag.createMap().load(source);
    const before = dmarFaults().length;

    dma.enableBusMaster();
    loadedSource.sync(DmaSync.PREWRITE);
    eduDma(bar, loadedSource.segments[0]!.busAddress, EDU.BUFFER, EDU_CHUNK, false); // edu's buffer now 0xee: unlike the canary and the neighbour
    loadedCanary.sync(DmaSync.PREREAD);
    loadedNeighbour.sync(DmaSync.PREREAD);
    // The page right after the canary (an off-by-one-buffer bug) and a wild address.
    const guard = loadedCanary.segments[0]!.busAddress + BigInt(canary.size);
    const wild = 0x0ff00000n;
    t.log(`canary at 0x${loadedCanary.segments[0]!.busAddress.toString(16)}, guard 0x${guard.toString(16)}, neighbour at 0x${loadedNeighbour.segments[0]!.busAddress.toString(16)}`);
    for (const to of [guard, wild]) eduDma(bar, EDU.BUFFER, to, EDU_CHUNK, true);
    dma.disableBusMaster();
    loadedCanary.sync(DmaSync.POSTREAD);
    loadedNeighbour.sync(DmaSync.POSTREAD);

    // VT-d reports the faulting page.
    const names = (addr: bigint) => (f: DmarFault) => f.addr === (addr & ~0xfffn);
    let faults: DmarFault[] = [];
    for (let i = 0; i < 50; i++) {
      faults = dmarFaults().slice(before);
      if (faults.some(names(guard)) && faults.some(names(wild))) break;
      sleepSync(100);
    }
    t.log(faults.map((f) => f.line).join('\n'));
    t.true(faults.some(names(guard)), `a DMAR fault names the guard page 0x${guard.toString(16)}`);
    t.true(faults.some(names(wild)), `a DMAR fault names the wild address 0x${wild.toString(16)}`);
    t.true(canaryView.every((b) => b === 0x5a), 'no byte of the canary changed');
    t.true(neighbourView.every((b) => b === 0x11), 'no byte of the buffer allocated after the canary changed');
    t.is(bar.read4(EDU.ID), 0x010000ed, 'the device and the process are still alive');
  });
});

/** edu opened through a port that records its teardown calls, with bus mastering read from sysfs at each. */
function withRecordedEdu<T>(use: (edu: PciDevice, dma: BusDma, records: PortRecord[]) => T): T {
  const records: PortRecord[] = [];
  const edu = PciDevice.open(bench.edu, { port: recordingPort(defaultKernelPort(), records, (f) => sysfsBusMaster(f.address)) });
  try {
    return use(edu, BusDma.forDevice(edu), records);
  } finally {
    edu.close();
  }
}

test('per-map lifetime: maps unload and memory frees while edu keeps bus mastering; the old bus addresses are dead', (t) => {
  withEdu((edu, _bar, dma) => {
    const tag = dma.createTag({ addressLimit: EDU.DMA_LIMIT });
    const mem = tag.allocMemory(4096);
    const loaded = tag.createMap().load(mem);
    const sab = tag.createMap().load(allocShared(4096));
    const before = edu.kernel.dma.availableMappings();
    dma.enableBusMaster();
    sab.unload();
    loaded.unload();
    mem.free();
    t.true(dma.busMasterEnabled, 'unloading did not stop the device\'s other DMA');
    if (before !== undefined) t.is(edu.kernel.dma.availableMappings(), before + 2, 'both kernel mappings went');
    t.throws(() => mem.buffer, { code: 'RELEASED' });
    t.throws(() => loaded.segments, { code: 'RELEASED' });
    // Whatever is left at close is torn down after bus mastering is off.
    const left = tag.allocMemory(4096);
    tag.createMap().load(left);
    edu.close();
    t.true(left.freed);
  });
});

test('close() with DMA still mapped and bus mastering on: bus mastering goes off first, then every mapping, then the fd', (t) => {
  withRecordedEdu((edu, dma, records) => {
    const tag = dma.createTag({ addressLimit: EDU.DMA_LIMIT });
    const left = tag.allocMemory(4096);
    tag.createMap().load(allocShared(8192));
    dma.enableBusMaster();
    edu.close();
    t.true(left.freed);
    t.log(records.join('\n'));
    const unmaps = records.filter((r) => r.includes(' dma unmap '));
    t.true(unmaps.length >= 2, 'the allocation and the loaded map were both unmapped');
    t.deepEqual(records, [...unmaps.map(() => `${bench.edu} dma unmap (bus master off)`), `${bench.edu} close (bus master off)`]);
  });
});

test('1,000 alloc/load/unload/free cycles leave no kernel DMA mapping and no locked memory behind', (t) => {
  withEdu((edu, _bar, dma) => {
    const domain = edu.kernel.dma;
    const tag = dma.createTag({ addressLimit: EDU.DMA_LIMIT });
    const availBefore = domain.availableMappings();
    const lockedBefore = vmLckKiB();
    const held = tag.allocMemory(64 * 1024);
    t.is(domain.availableMappings(), availBefore === undefined ? undefined : availBefore - 1);
    const lockedHeld = vmLckKiB();
    held.free();
    const buf = allocShared(8192);
    const started = Date.now();
    for (let i = 0; i < 1000; i++) {
      const mem = tag.allocMemory(4096 * (1 + (i % 2)));
      const map = tag.createMap();
      map.load(mem).unload();
      map.load(buf, 0, 4096 * (1 + (i % 2))).unload();
      mem.free();
    }
    t.log(`1000 cycles in ${Date.now() - started} ms; DMA_AVAIL ${availBefore} → ${domain.availableMappings()}; VmLck ${lockedBefore} kB (${lockedHeld} kB with 64 KiB mapped) → ${vmLckKiB()} kB`);
    t.not(availBefore, undefined, 'the kernel reports DMA_AVAIL');
    t.is(domain.availableMappings(), availBefore);
    t.is(dma.mappingCount, 0);
    t.is(iovaSpace(edu).allocations, 0);
    t.is(lockedHeld - lockedBefore, 64, 'VFIO accounts pinned pages in VmLck');
    t.is(vmLckKiB(), lockedBefore);
  });
});
