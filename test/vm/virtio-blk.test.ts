/**
 * The virtio-blk driver in the VM, on QEMU's virtio-blk-pci (modern only,
 * iommu_platform=on, behind the emulated VT-d; vm/bench.ts: vblk0 at 0c.0,
 * a raw image in the run's out dir): the whole disk in mixed-size writes
 * and reads (4 KiB to 1 MiB) checked against the host's backing file, from
 * bounced memory, registered memory through the promise API and
 * RegisteredBuffer; bad requests refused with nothing submitted; a driver
 * crash mid-I/O quiesced (bus mastering off before its DMA window is
 * unmapped and the device reset) and restarted with every acknowledged
 * write intact; and the identical reference disk at 0d.0 taken by the
 * guest kernel's virtio_blk.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { firstValueFrom, filter } from 'rxjs';
import { BlockProxy } from '../../services/block-service.js';
import { BlockGoneError } from '../../drivers/block.js';
import { VirtioDisk } from '../../drivers/virtio-blk/disk.js';
import { virtioBlkDriver } from '../../drivers/virtio-blk/index.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { PciDevice } from '../../pci/device.js';
import { defaultKernelPort } from '../../pci/kernel-port.js';
import { allocShared } from '../../shm/mapping.js';
import { withMainThread } from '../../vm/main-thread-drivers.js';
import { defaultDevices, findProjectRoot, guestAddress } from '../../vm/bench.js';
import { kernelVirtioBlk } from '../../vm/benchmarks/kernel-drivers.js';
import { firstTakeBackDma, recordingPort, resetsAndCloses, type PortRecord } from '../support/recording-port.js';
import { sysfsBusMaster } from './devices.js';
import { run, type Run } from './host-run.js';
import { fill, parallel, pieces } from './disk-io.js';

const disks = defaultDevices.filter((d) => d.model === 'virtio-blk-pci');
const upciDisk = disks.find((d) => d.bind === 'vfio-pci')!;
const kernelDisk = disks.find((d) => d.bind === undefined)!;
const VBLK = parsePciAddress(guestAddress(upciDisk));
const OUT = process.env.UPCI_VM_OUT ?? '/tmp/upci-out';
const MiB = 1024 * 1024;
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** The built-in drivers and 'virtio-blk-main': the driver in the host's main thread, its disk the VirtioDisk itself. */
const withMainThreadBlk = withMainThread(virtioBlkDriver);

async function ownDisk(r: Run, name: string): Promise<VirtioDisk> {
  const device = await r.host.blockDevice(name, 120_000);
  if (!(device instanceof VirtioDisk)) throw new Error(`${name} is not a VirtioDisk in this thread`);
  return device;
}

test.serial('the whole disk in mixed-size writes and reads (4 KiB-1 MiB) matches the host\'s backing file; registered memory both ways; bad requests refused with nothing submitted; bus mastering off after the stop', async (t) => {
  const records: PortRecord[] = [];
  const kernel = recordingPort(defaultKernelPort(), records, (f) => sysfsBusMaster(f.address));
  const r = run(t, { devices: [{ address: VBLK, name: 'vblk0', driver: 'virtio-blk-main' }] }, { registry: withMainThreadBlk, open: (address) => PciDevice.open(address, { port: kernel }) });
  const disk = await ownDisk(r, 'vblk0n1');
  t.is(disk.blockSize, 512);
  t.is(disk.blockCount * disk.blockSize, upciDisk.drive!.sizeMiB * MiB, 'the capacity QEMU was given');
  t.log(r.events.filter((e) => e.type === 'note').map((e) => (e.type === 'note' ? e.message : '')).join('\n'));

  const total = disk.blockCount * disk.blockSize;
  const expected = fill(new Uint8Array(total), 0x5eed);
  const writes = pieces(total, 1);
  const order = writes.map((_, i) => i).sort((a, b) => ((a * 2654435761) >>> 0) - ((b * 2654435761) >>> 0));
  await parallel(order, 8, async (i) => {
    const { offset, length } = writes[i]!;
    let data = expected.subarray(offset, offset + length);
    if (i % 2 === 0) {
      const shared = new Uint8Array(allocShared(length));
      shared.set(data);
      data = shared;
    }
    await disk.write(offset / 512, data);
  });
  await disk.flush();
  t.log(`wrote ${writes.length} pieces`);
  t.is(sha256(readFileSync(join(OUT, `${upciDisk.drive!.id}.img`))), sha256(expected), 'the host\'s backing file holds what was written');

  // Read back in other pieces: plain arrays (bounced) and views of registered memory (given to the device where they are).
  const registered = disk.allocBuffer(MiB);
  const back = new Uint8Array(total);
  const reads = pieces(total, 2);
  let direct = 0;
  for (const [i, { offset, length }] of reads.entries()) {
    if (i % 2 === 0) back.set(await disk.read(offset / 512, length / 512), offset);
    else {
      const view = registered.bytes.subarray(0, length);
      await disk.read(offset / 512, length / 512, view);
      back.set(view, offset);
      direct++;
    }
  }
  t.true(direct > 0);
  t.is(sha256(back), sha256(expected), 'what was read is what was written');

  // RegisteredBuffer: no promise, an end per request with the caller's tag.
  const chunk = disk.maxTransferBytes;
  fill(registered.bytes.subarray(0, chunk), 77);
  const wrote = firstValueFrom(registered.ends.pipe(filter((e) => e.tag === 11)));
  t.true(registered.write(100, chunk / 512, 0, 11));
  t.is((await wrote).error, undefined);
  const written = Uint8Array.from(registered.bytes.subarray(0, chunk));
  registered.bytes.fill(0, 0, chunk);
  const read = firstValueFrom(registered.ends.pipe(filter((e) => e.tag === 12)));
  t.true(registered.read(100, chunk / 512, 0, 12));
  t.is((await read).error, undefined);
  t.is(sha256(registered.bytes.subarray(0, chunk)), sha256(written), 'registered memory both ways');
  t.is(sha256(readFileSync(join(OUT, `${upciDisk.drive!.id}.img`)).subarray(100 * 512, 100 * 512 + chunk)), sha256(written), 'and on the host\'s file');

  // Bad requests: a typed error naming the problem and the fix, and nothing reaches the device.
  const bad: [string, () => Promise<unknown>, RegExp][] = [
    ['past the end', () => disk.read(disk.blockCount - 1, 2), /run past the end/],
    ['write past the end', () => disk.write(disk.blockCount, new Uint8Array(512)), /run past the end/],
    ['misaligned: a partial block', () => disk.write(0, new Uint8Array(700)), /not a whole number of 512-byte blocks/],
    ['misaligned: wrong buffer size', () => disk.read(0, 2, new Uint8Array(1000)), /the buffer holds 1000 bytes/],
    ['zero-length', () => disk.read(0, 0), /zero-length request/],
    ['fractional LBA', () => disk.read(1.5, 1), /not a non-negative integer/],
    ['discard (not negotiated)', () => disk.discard(0, 1), /does not discard/],
    ['registered, misaligned offset', async () => registered.read(0, 1, 2, 1), /4-byte-aligned/],
    ['registered, past the end', async () => registered.write(disk.blockCount, 1, 0, 1), /run past the end/],
  ];
  const reaped = disk.reaped;
  const refused = disk.refused;
  for (const [what, call, message] of bad) {
    const e = await t.throwsAsync(call(), { code: 'OUT_OF_RANGE', message }, what);
    t.regex(e?.message ?? '', /fix:/, `${what}: the error says how to fix it`);
  }
  t.is(disk.refused - refused, bad.length);
  await disk.read(0, 1);
  t.is(disk.reaped - reaped, 1, 'of all those requests only the good read reached the device');
  registered.unregister();

  const report = await r.host.shutdown();
  t.deepEqual(report.devices.map((d) => [d.outcome.kind, d.released.error]), [['stopped', undefined]]);
  t.false(r.events.some((e) => e.type === 'note' && /detach failed/.test(e.message)), 'the reset at detach completed');
  t.false(sysfsBusMaster(VBLK), 'bus mastering off in sysfs');
  t.deepEqual(resetsAndCloses(records, VBLK).at(-1), `${VBLK} close (bus master off)`);
});

test.serial('fault injection: the driver (in its own thread) throws mid-I/O; the device is quiesced (bus mastering off before it is reset), restarted, and every acknowledged write reads back', async (t) => {
  const records: PortRecord[] = [];
  const kernel = recordingPort(defaultKernelPort(), records, (f) => sysfsBusMaster(f.address));
  const r = run(t, {
    restart: { initialDelayMs: 50, maxDelayMs: 1000, maxRestarts: 2 },
    devices: [{ address: VBLK, name: 'vblk0', driver: 'virtio-blk', options: { queueDepth: 16, failAfterCompletions: 40 } }],
  }, { open: (address) => PciDevice.open(address, { port: kernel }) });
  const first = await r.host.blockDevice('vblk0n1', 120_000);
  t.true(first instanceof BlockProxy, 'the driver runs in a thread of its own');
  const acknowledged: { lba: number; data: Uint8Array }[] = [];
  const failures: Error[] = [];
  const blocks = 128;
  await parallel(Array.from({ length: 80 }, (_, i) => i), 4, async (i) => {
    const data = fill(new Uint8Array(blocks * 512), 1000 + i);
    try {
      await first.write(i * blocks, data);
      acknowledged.push({ lba: i * blocks, data });
    } catch (e) {
      failures.push(e as Error);
    }
  });
  t.log(`${acknowledged.length} writes acknowledged, ${failures.length} failed: ${[...new Set(failures.map((e) => e.name))].join(', ')}`);
  t.true(acknowledged.length >= 39, 'the writes before the fault were acknowledged');
  t.true(failures.length > 0, 'writes after the fault failed rather than hanging');
  await r.until('the restart', (e) => e.some((x) => x.type === 'state' && x.address === VBLK && x.state === 'running' && x.incarnation === 1));
  t.true(r.events.some((e) => e.type === 'fault' && /fault injection/.test(e.fault.message)));
  // The device has no reset method VFIO can use here: the host closes and reopens it, which resets it.
  t.regex(resetsAndCloses(records, VBLK)[0] ?? 'nothing', / \(bus master off\)$/, 'the faulted incarnation was quiesced (bus mastering off, read from sysfs) before the device was reset');
  t.deepEqual(firstTakeBackDma(records, VBLK), [`${VBLK} dma unmap window (bus master off)`, `${VBLK} dma release window (bus master off)`], 'the faulted thread\'s DMA window was unmapped and released with bus mastering off: no mapping of it left');
  const again = await r.host.blockDevice('vblk0n1', 120_000);
  await t.throwsAsync(first.read(0, 1), { instanceOf: BlockGoneError }, 'the old disk refuses');
  for (const { lba, data } of acknowledged) {
    if (sha256(await again.read(lba, blocks)) !== sha256(data)) t.fail(`acknowledged write at LBA ${lba} did not survive`);
  }
  const image = readFileSync(join(OUT, `${upciDisk.drive!.id}.img`));
  for (const { lba, data } of acknowledged) {
    if (sha256(image.subarray(lba * 512, lba * 512 + data.length)) !== sha256(data)) t.fail(`acknowledged write at LBA ${lba} is not in the host's file`);
  }
  const report = await r.host.shutdown();
  t.is(report.devices[0]!.restarts, 1);
  t.false(sysfsBusMaster(VBLK), 'bus mastering off in sysfs after the stop');
});

test.serial('the reference disk: the guest kernel\'s virtio_blk takes the identical device and sees the same capacity', async (t) => {
  const node = (await kernelVirtioBlk(findProjectRoot(), kernelDisk)).slice('/dev/'.length);
  const sectors = Number(readFileSync(`/sys/block/${node}/size`, 'utf8').trim());
  t.is(sectors * 512, kernelDisk.drive!.sizeMiB * MiB, `${node}: the capacity QEMU was given`);
});
