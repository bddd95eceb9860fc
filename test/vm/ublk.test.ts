/**
 * The ublk export in the 6.12 guest: upci's NVMe driver (in its own thread)
 * serves a namespace as /dev/ublkbN through exports/ublk-export.ts, and the
 * kernel's own tools use it as a disk: mkfs.ext4 (which discards the whole
 * device first), mount, copy, unmount, fsck -n, and each file's bytes checked
 * in QEMU's backing image on the host, not only read back through the export.
 * The config's ublk exports, across a restart of the driver and the death of
 * the host, are exports.test.ts's.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UblkExport } from '../../exports/ublk-export.js';
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
