/**
 * The ublk export in the 6.12 guest: upci's NVMe driver (in its own thread)
 * serves a namespace as /dev/ublkbN through actors/ublk-export.ts, and the
 * kernel's own tools use it as a disk: mkfs.ext4 (which discards the whole
 * device first), mount, copy, unmount, fsck -n, and each file's bytes checked
 * in QEMU's backing image on the host, not only read back through the export;
 * and the export across a supervised restart of the driver under it.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UblkExport } from '../../actors/ublk-export.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { bench } from './devices.js';
import { run } from './host-run.js';
import { misplacedInImage, sh } from './disk-check.js';

const NVME0 = parsePciAddress(bench.nvme);
const OUT = process.env.UPCI_VM_OUT ?? '/tmp/upci-out';
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Bytes that differ per file and per position (xorshift32), without Math.random. */
function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  const words = new Uint32Array(bytes.buffer, 0, length >>> 2);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    words[i] = x;
  }
  return bytes;
}

test.serial('ublk export: /dev/ublkbN of an NVMe namespace takes mkfs.ext4, mount, 20 MB of files, fsck -n clean; the files are in the backing image; close removes the device', async (t) => {
  const r = run(t, { devices: [{ address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 2, queueDepth: 32 } }] });
  const ns = await r.host.blockDevice('nvme0n2', 120_000);
  const ublk = await UblkExport.open(ns, { queueDepth: 32 });
  t.teardown(() => ublk.close());
  const dev = ublk.path;
  t.log(`${ns.name} (${ns.blockCount} blocks of ${ns.blockSize} bytes, discard ${ns.canDiscard}) exported as ${dev}`);
  t.is(Number((await sh(t, 'blockdev', ['--getsize64', dev])).trim()), ns.blockCount * ns.blockSize, 'the disk is the namespace\'s size');
  t.is(Number((await sh(t, 'blockdev', ['--getss', dev])).trim()), ns.blockSize, 'with its logical block size');

  const mnt = mkdtempSync(join(tmpdir(), 'upci-ublk-mnt-'));
  const src = mkdtempSync(join(tmpdir(), 'upci-ublk-src-'));
  const files = Array.from({ length: 20 }, (_, i) => ({ name: `file-${i}.bin`, data: pattern(1_000_000 + i * 4096, 700 + i) }));
  for (const f of files) writeFileSync(join(src, f.name), f.data);

  await sh(t, 'mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=1,lazy_journal_init=1', dev]);
  await sh(t, 'mount', ['-t', 'ext4', dev, mnt]);
  let mounted = true;
  try {
    await sh(t, 'cp', [...files.map((f) => join(src, f.name)), mnt]);
    await sh(t, 'sync', []);
    await sh(t, 'umount', [mnt]);
    mounted = false;
    await sh(t, 'fsck.ext4', ['-n', '-f', dev]);
    await sh(t, 'mount', ['-t', 'ext4', '-o', 'ro', dev, mnt]);
    mounted = true;
    // Asynchronous reads only: this process serves the disk they go to (a sync read would deadlock it).
    for (const f of files) t.is(sha256(await readFile(join(mnt, f.name))), sha256(f.data), `${f.name} after the remount`);
    t.deepEqual(await misplacedInImage(t, join(OUT, 'nvme0n2.img'), mnt, files), [],
      'every file\'s bytes are in the host\'s image (nvme0n2.img) where the file system put them');
    await sh(t, 'umount', [mnt]);
    mounted = false;
  } finally {
    if (mounted) await sh(t, 'umount', [mnt]).catch(() => undefined);
  }
  t.log(`export: ${JSON.stringify(ublk.stats)}`);
  t.true(ublk.stats.writes > 100 && ublk.stats.reads > 10, 'the kernel did its I/O through the export');
  t.true(ublk.stats.flushes > 0, 'flushes reached the device');
  if (ns.canDiscard) t.true(ublk.stats.discards > 0, 'mkfs.ext4\'s discard reached the device');
  t.is(ublk.stats.errors, 0);
  await ublk.close();
  t.false(existsSync(dev), `${dev} is gone after close`);
  t.false(existsSync(`/dev/ublkc${ublk.id}`), 'and so is its control node');
  t.false(r.events.some((e) => e.type === 'fault'), 'no driver fault');
  const report = await r.host.shutdown();
  t.deepEqual(report.devices.map((d) => d.outcome.kind), ['stopped']);
});

test.serial('ublk export across a supervised restart: the driver crashes mid-write (fault injection), the export issues what failed again to the restarted driver; dd sees no error and the image holds every byte', async (t) => {
  const r = run(t, {
    restart: { initialDelayMs: 50, maxDelayMs: 1000, maxRestarts: 2 },
    devices: [{ address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 1, queueDepth: 16, failAfterCompletions: 40 } }],
  });
  const ns = await r.host.blockDevice('nvme0n1', 120_000);
  const ublk = await UblkExport.open(ns, { queueDepth: 16, reacquire: () => r.host.blockDevice('nvme0n1', 120_000) });
  t.teardown(() => ublk.close());
  const data = pattern(8 * 1024 * 1024, 4321);
  const file = join(mkdtempSync(join(tmpdir(), 'upci-ublk-src-')), 'pattern.bin');
  writeFileSync(file, data);
  // 128 direct writes of 64 KiB: the first incarnation fails at its 40th completion, in the middle of them.
  await sh(t, 'dd', [`if=${file}`, `of=${ublk.path}`, 'bs=64k', 'oflag=direct', 'conv=fsync'], 300_000);
  t.true(r.events.some((e) => e.type === 'fault' && /fault injection/.test(e.fault.message)), 'the driver crashed during the writes');
  t.true(r.events.some((e) => e.type === 'state' && e.address === NVME0 && e.state === 'running' && e.incarnation === 1), 'and was restarted');
  t.log(`export: ${JSON.stringify(ublk.stats)}, issued again: ${ublk.reissued}`);
  t.true(ublk.reissued > 0, 'requests the old incarnation failed were issued again');
  t.is(ublk.stats.errors, 0, 'the OS saw no error');
  const image = await open(join(OUT, 'nvme0n1.img'));
  try {
    const { buffer } = await image.read({ buffer: Buffer.alloc(data.length), position: 0 });
    t.is(sha256(buffer), sha256(data), 'the host\'s image (nvme0n1.img) holds all 8 MiB dd wrote');
  } finally {
    await image.close();
  }
  await ublk.close();
  t.false(existsSync(ublk.path), `${ublk.path} is gone after close`);
});
