/**
 * Exports declared in `upci run`'s config (actors/exports.ts), run as a user
 * runs them: `upci run` in a child process, its plain status lines read, the
 * guest kernel the client. An NBD export of an NVMe namespace through the
 * kernel's nbd client, across a supervised restart of the nvme driver (the
 * fault option failAfterCompletions); file systems on exports of NVMe
 * namespaces and of a virtio-blk disk; a TAP export of the e1000e, pinged over
 * IPv6 link-local from the guest kernel's own e1000e on the same hub (in a
 * network namespace of its own: vm/net/kernel-peer.ts) and carrying 50 MB
 * over TCP to a sink there. No IPv4 anywhere.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { defaultDevices, guestAddress } from '../../vm/bench.js';
import { KernelPeer } from '../../vm/net/kernel-peer.js';
import { until, within } from '../support/bounded.js';
import { sendOverTcp, tcpSinkScript } from '../../vm/net/tcp-transfer.js';
import { misplacedInImage } from './disk-check.js';
import { bench } from './devices.js';

const NVME0 = parsePciAddress(bench.nvme);
const VBLK0 = guestAddress(defaultDevices.find((d) => d.model === 'virtio-blk-pci' && d.bind === 'vfio-pci')!);
const nics = defaultDevices.filter((d) => d.model === 'e1000e');
const UPCI_NIC = guestAddress(nics.find((d) => d.bind === 'vfio-pci')!);
const KERNEL_NIC = guestAddress(nics.find((d) => d.bind === 'e1000e')!);
const OUT = process.env.UPCI_VM_OUT ?? '/tmp/upci-out';

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** A program's output, or a rejection with it when it exits non-zero (an I/O error from dd is one). */
function sh(t: ExecutionContext, command: string, args: readonly string[], quiet = false): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: 300_000, killSignal: 'SIGKILL', encoding: 'utf8', maxBuffer: 64 * MiB }, (error, stdout, stderr) => {
      const out = `${stdout}${stderr}`.trim();
      if (!quiet || error !== null) t.log(`$ ${command} ${args.join(' ')} -> ${error === null ? 0 : (error.code ?? error.signal)}${out === '' ? '' : `\n${out}`}`);
      if (error === null) resolve(out);
      else reject(new Error(`${command} ${args.join(' ')} failed (${error.code ?? error.signal}):\n${out}`));
    });
  });
}

interface UpciRun {
  /** Its stdout and stderr so far. */
  output(): string;
  /** The first match of `pattern` in the output, waited for; throws naming `what` after `ms` or when the host exits first. */
  waitFor(what: string, pattern: RegExp, ms: number): Promise<RegExpMatchArray>;
  /** SIGINT, then its exit status. */
  stop(): Promise<number | null>;
  /** SIGKILL: the host dies with no chance to clean up. */
  kill(): void;
}

/** `upci run` of `config` (written to `dir`) in a child process, with `flags`; killed at teardown if still running. */
function upciRun(t: ExecutionContext, dir: string, config: unknown, flags: readonly string[] = []): UpciRun {
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify(config));
  // This build's own upci (a deliberate break's copy of dist runs its own).
  const child: ChildProcess = spawn(process.execPath, [new URL('../../bin/upci.js', import.meta.url).pathname, 'run', file, ...flags], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return {
    output: () => out,
    async waitFor(what, pattern, ms) {
      const deadline = Date.now() + ms;
      for (;;) {
        const m = out.match(pattern);
        if (m !== null) return m;
        if (child.exitCode !== null || Date.now() > deadline) {
          t.log(out.split('\n').filter((l) => !l.includes(' stats ')).join('\n'));
          throw new Error(`${what}: not seen ${child.exitCode !== null ? `(upci run exited ${child.exitCode})` : `within ${ms} ms`}`);
        }
        await sleep(50);
      }
    },
    kill() {
      child.kill('SIGKILL');
    },
    async stop() {
      child.kill('SIGINT');
      return within(60_000, exited, '`upci run` did not exit within 60 s of SIGINT');
    },
  };
}

/** xorshift32 bytes: the same for a seed. */
function pattern(bytes: number, seed: number): Uint8Array {
  const out = new Uint8Array(bytes);
  const words = new Uint32Array(out.buffer);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    words[i] = x;
  }
  return out;
}

const NBD = '/dev/nbd1';
/** The region written, then read again and again through the restart. */
const REGION = 4 * MiB;
/**
 * The first incarnation's completion handler throws at this I/O completion:
 * past what the client's connect (partition scan) and the region's write
 * take (64 writes of 64 KiB, a flush), inside the read passes.
 */
const FAULT_AT = 150;

/**
 * Writes `data` (in the file `source`) to the block device `dev` of an export, then reads it back pass after pass
 * until a whole pass ran after the export followed the driver's next incarnation (the fault comes within the first
 * passes), and checks: the driver failed and was restarted, the export followed, every pass read what was written,
 * the kernel logged no I/O error since `logged` lines of its log, and the namespace `image`'s backing file holds it.
 */
async function writeThenReadThroughRestart(t: ExecutionContext, upci: UpciRun, dev: string, source: string, data: Uint8Array, exported: string, image: string, logged: number): Promise<void> {
  await sh(t, 'dd', [`if=${source}`, `of=${dev}`, 'bs=64k', 'oflag=direct', 'conv=fsync', 'status=none']);
  t.false(/restart #/.test(upci.output()), `the driver's first incarnation took the write (FAULT_AT ${FAULT_AT} is past it)`);
  const passes: string[] = [];
  const followed = new RegExp(` export ${exported} at \\S+ followed`);
  let after = -1;
  for (let pass = 0; pass < 12 && (after < 0 || pass <= after); pass++) {
    const into = join(dirname(source), `read-${pass}.bin`);
    await sh(t, 'dd', [`if=${dev}`, `of=${into}`, 'bs=64k', `count=${REGION / (64 * 1024)}`, 'iflag=direct', 'status=none']);
    passes.push(sha256(readFileSync(into)));
    if (after < 0 && followed.test(upci.output())) after = pass + 1;
  }
  t.log(upci.output().split('\n').filter((l) => / fault | restart #| export /.test(l)).join('\n'));
  t.regex(upci.output(), new RegExp(`${NVME0} fault .*fault injection: failAfterCompletions`), 'the driver failed');
  t.regex(upci.output(), new RegExp(`${NVME0} restart #1`), 'the host restarted it');
  t.regex(upci.output(), new RegExp(` export ${exported} at \\S+ followed: incarnation 2 of its driver`), 'the export followed the next incarnation');
  t.true(after > 0 && passes.length > after, `a whole read pass ran after the restart (${passes.length} passes)`);
  t.deepEqual(passes, passes.map(() => sha256(data)), 'every pass, before, through and after the restart, read what was written');
  const kernelLog = (await sh(t, 'dmesg', [], true)).split('\n').slice(logged - 1);
  const name = dev.slice('/dev/'.length);
  t.deepEqual(kernelLog.filter((l) => (l.includes(name) || /I\/O error/.test(l)) && /error|fail|dead/i.test(l)), [], `the kernel logged no I/O error on ${name}`);
  // Where the driver put it: QEMU's backing image on the host, not read back through the same driver.
  const file = await open(join(OUT, `${image}.img`));
  try {
    const { buffer } = await file.read({ buffer: Buffer.alloc(REGION), position: 0 });
    t.is(sha256(buffer), sha256(data), `the namespace's backing image (${image}.img) holds what the client wrote`);
  } finally {
    await file.close();
  }
}

test.serial('an nbd export from the config: /dev/nbdN reads and writes the namespace; the nvme driver fails and is restarted by the host, the client stays connected and every read returns the right data with no I/O error; the socket (mode 0600) is removed at SIGINT', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-exports-'));
  // A directory that does not exist yet: the host makes it.
  const socket = join(dir, 'run', 'nvme0n1.sock');
  const upci = upciRun(t, dir, {
    watchdogMs: 3000,
    restart: { initialDelayMs: 50, maxDelayMs: 1000, maxRestarts: 2 },
    devices: [{ address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 1, queueDepth: 16, failAfterCompletions: FAULT_AT } }],
    exports: [{ nbd: 'nvme0n1', socket }],
  });
  const opened = await upci.waitFor('the export opened', /export nbd nvme0n1 at (\S+) open: (\d+) blocks of (\d+) B, mode 0600/, 240_000);
  t.is(opened[1], socket, 'the status output names the export\'s socket');
  t.true(statSync(socket).isSocket());
  t.is(statSync(socket).mode & 0o777, 0o600, 'the socket is its owner\'s only');
  const data = pattern(REGION, 2026);
  const source = join(dir, 'pattern.bin');
  writeFileSync(source, data);

  // The kernel's log from here on is this test's.
  const logged = (await sh(t, 'dmesg', [], true)).split('\n').length;
  await sh(t, 'nbd-client', ['-N', 'nvme0n1', '-b', opened[3]!, '-u', socket, NBD]);
  let connected = true;
  try {
    await writeThenReadThroughRestart(t, upci, NBD, source, data, 'nbd nvme0n1', 'nvme0n1', logged);
    await sh(t, 'nbd-client', ['-d', NBD]);
    connected = false;
  } finally {
    if (connected) await sh(t, 'nbd-client', ['-d', NBD]).catch(() => undefined);
  }
  t.is(await upci.stop(), 0, 'upci run exits 0 at SIGINT');
  t.regex(upci.output(), / export nbd nvme0n1 at \S+ closed: removed/);
  t.false(existsSync(socket), 'the socket file is gone');
});

const UBLK_ID = 5;

test.serial('a ublk export from the config: /dev/ublkbN reads and writes the namespace; the nvme driver fails and is restarted by the host, every read returns the right data with no I/O error; the disk is removed at SIGINT', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-exports-'));
  const dev = `/dev/ublkb${UBLK_ID}`;
  const upci = upciRun(t, dir, {
    watchdogMs: 3000,
    restart: { initialDelayMs: 50, maxDelayMs: 1000, maxRestarts: 2 },
    devices: [{ address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 1, queueDepth: 16, failAfterCompletions: FAULT_AT } }],
    exports: [{ ublk: 'nvme0n2', id: UBLK_ID }],
  });
  const opened = await upci.waitFor('the export opened', /export ublk nvme0n2 at (\S+) open: (\S+): (\d+) blocks of (\d+) B/, 240_000);
  t.is(opened[1], dev, 'the status output names the disk');
  t.is(opened[2], dev);
  t.true(statSync(dev).isBlockDevice());
  const data = pattern(REGION, 2027);
  const source = join(dir, 'pattern.bin');
  writeFileSync(source, data);
  const logged = (await sh(t, 'dmesg', [], true)).split('\n').length;
  await writeThenReadThroughRestart(t, upci, dev, source, data, 'ublk nvme0n2', 'nvme0n2', logged);
  t.is(await upci.stop(), 0, 'upci run exits 0 at SIGINT');
  t.regex(upci.output(), / export ublk nvme0n2 at \S+ closed: removed/);
  t.false(existsSync(dev), 'the disk is gone');
});

test.serial('a ublk export outlives its host: `upci run` killed -9 while dd writes; /dev/ublkbN never disappears, the next `upci run` of the same config takes it over, dd ends without an I/O error and the image holds every byte', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-exports-'));
  const id = UBLK_ID + 1;
  const dev = `/dev/ublkb${id}`;
  const config = {
    watchdogMs: 3000,
    devices: [{ address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 1, queueDepth: 16 } }],
    exports: [{ ublk: 'nvme0n2', id }],
  };
  const first = upciRun(t, dir, config);
  await first.waitFor('the export opened', / export ublk nvme0n2 at \S+ open: /, 240_000);
  const data = pattern(4 * REGION, 2028);
  const source = join(dir, 'pattern.bin');
  writeFileSync(source, data);
  const logged = (await sh(t, 'dmesg', [], true)).split('\n').length;
  // One 64 KiB write at a time: the host dies with one of them (or none) in flight.
  const dd = spawn('dd', [`if=${source}`, `of=${dev}`, 'bs=64k', 'oflag=direct', 'conv=fsync', 'status=none'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let ddErr = '';
  dd.stderr!.on('data', (d: Buffer) => (ddErr += d.toString()));
  const ddExit = new Promise<number | null>((resolve) => dd.on('exit', (code) => resolve(code)));
  t.teardown(() => dd.kill('SIGKILL'));
  const written = () => Number(readFileSync(`/sys/block/ublkb${id}/stat`, 'utf8').trim().split(/\s+/)[6]) * 512;
  await until('dd wrote its first 4 MiB through the export', () => written() >= REGION, 120_000, 20);
  first.kill();
  // /dev/ublkbN is watched from here until the next host has taken it over.
  let vanished = 0;
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      if (!existsSync(dev)) vanished++;
      await sleep(50);
    }
  })();
  const second = upciRun(t, dir, config);
  await second.waitFor('the next host took the disk over', / export ublk nvme0n2 at \S+ followed: \/dev\/ublkb\d+ was left by a host that died; taking it over/, 240_000);
  t.log(second.output().split('\n').filter((l) => / export /.test(l)).join('\n'));
  await second.waitFor('the export opened again', / export ublk nvme0n2 at \S+ open: /, 120_000);
  t.is(await within(300_000, ddExit, 'dd did not end within 300 s of the takeover'), 0, `dd ended without an error ${ddErr}`);
  watching = false;
  await watcher;
  t.is(vanished, 0, `${dev} never disappeared`);
  const kernelLog = (await sh(t, 'dmesg', [], true)).split('\n').slice(logged - 1);
  t.deepEqual(kernelLog.filter((l) => (l.includes(`ublkb${id}`) || /I\/O error/.test(l)) && /error|fail|dead/i.test(l)), [], 'the kernel logged no I/O error');
  const file = await open(join(OUT, 'nvme0n2.img'));
  try {
    const { buffer } = await file.read({ buffer: Buffer.alloc(data.length), position: 0 });
    t.is(sha256(buffer), sha256(data), 'the namespace\'s backing image (nvme0n2.img) holds all 16 MiB dd wrote, across the host\'s death');
  } finally {
    await file.close();
  }
  t.is(await second.stop(), 0, 'the second host exits 0 at SIGINT');
  t.false(existsSync(dev), 'and removes the disk');
});

/** A driver module of the user's own (as `--watch` reloads it): upci's nvme driver, described as `version`. */
function writeNvmeDriver(file: string, version: string): void {
  const nvme = new URL('../../drivers/nvme/index.js', import.meta.url).href;
  writeFileSync(file, `import { nvmeDriver } from '${nvme}';\nexport default { ...nvmeDriver, description: ${JSON.stringify(`nvme, ${version}`)} };\n`);
}

test.serial('`upci run --watch` reloads the nvme driver with edited code under a mounted ext4 on /dev/ublkbN with a writer running: the file system stays mounted, the writer sees no error, fsck -n is clean and every file is in the image', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-exports-'));
  const id = UBLK_ID + 2;
  const dev = `/dev/ublkb${id}`;
  const driver = join(dir, 'my-nvme.js');
  writeNvmeDriver(driver, 'v1');
  const upci = upciRun(t, dir, {
    watchdogMs: 3000,
    devices: [{ address: NVME0, name: 'nvme0', driver: './my-nvme.js', options: { ioQueues: 1, queueDepth: 32 } }],
    exports: [{ ublk: 'nvme0n2', id }],
  }, ['--watch']);
  await upci.waitFor('the export opened', / export ublk nvme0n2 at \S+ open: /, 240_000);
  const mnt = mkdtempSync(join(tmpdir(), 'upci-watch-mnt-'));
  await sh(t, 'mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=1,lazy_journal_init=1', dev]);
  await sh(t, 'mount', ['-t', 'ext4', dev, mnt]);
  let mounted = true;
  t.teardown(async () => {
    if (mounted) await sh(t, 'umount', ['-l', mnt]).catch(() => undefined);
  });
  const FILES = 48;
  const data = pattern(MiB, 2029);
  const source = join(dir, 'file.bin');
  writeFileSync(source, data);
  // The writer: one file after another, each synced; it stops at its first error.
  const writer = spawn('sh', ['-c', `for i in $(seq 1 ${FILES}); do dd if=${source} of=${mnt}/f$i bs=64k conv=fsync status=none || exit 1; done`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let writerErr = '';
  writer.stderr!.on('data', (d: Buffer) => (writerErr += d.toString()));
  const writerExit = new Promise<number | null>((resolve) => writer.on('exit', (code) => resolve(code)));
  t.teardown(() => writer.kill('SIGKILL'));
  await until('the writer wrote its first files', () => existsSync(join(mnt, 'f4')), 120_000, 20);
  writeNvmeDriver(driver, 'v2');
  await upci.waitFor('the reload', new RegExp(`${NVME0} \\S+ reloading`), 60_000);
  await upci.waitFor('the export followed the new code', / export ublk nvme0n2 at \S+ followed: incarnation 2 of its driver/, 240_000);
  const reloadedAt = readdirSync(mnt).length;
  t.is(await within(300_000, writerExit, 'the writer did not end within 300 s of the reload'), 0, `the writer saw no error ${writerErr}`);
  t.true(reloadedAt < FILES, `the writer was still writing when the new code took over (${reloadedAt} of ${FILES} files)`);
  t.log(upci.output().split('\n').filter((l) => new RegExp(`${NVME0} \\S+ (reloading|attaching|running)| export `).test(l)).join('\n'));
  t.false(/ fault /.test(upci.output()), 'a reload, not a fault');
  const files = Array.from({ length: FILES }, (_, i) => ({ name: `f${i + 1}`, data }));
  await sh(t, 'umount', [mnt]);
  mounted = false;
  await sh(t, 'fsck.ext4', ['-n', '-f', dev]);
  await sh(t, 'mount', ['-t', 'ext4', '-o', 'ro', dev, mnt]);
  mounted = true;
  for (const f of files) t.is(sha256(readFileSync(join(mnt, f.name))), sha256(data), `${f.name} after the remount`);
  t.deepEqual(await misplacedInImage(t, join(OUT, 'nvme0n2.img'), mnt, files), [], 'every file\'s bytes are in the host\'s image where the file system put them');
  await sh(t, 'umount', [mnt]);
  mounted = false;
  t.is(await upci.stop(), 0);
  t.false(existsSync(dev), 'the disk is removed at SIGINT');
});

/** mkfs.ext4 on `dev`, `files` copied in, fsck -n clean after the unmount, and each file where ext4 put it in the namespace's backing image. */
async function fileSystemOn(t: ExecutionContext, dev: string, image: string, files: readonly { name: string; data: Uint8Array }[]): Promise<void> {
  const mnt = mkdtempSync(join(tmpdir(), 'upci-fs-mnt-'));
  await sh(t, 'mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=1,lazy_journal_init=1', dev]);
  await sh(t, 'mount', ['-t', 'ext4', dev, mnt]);
  let mounted = true;
  try {
    for (const f of files) writeFileSync(join(mnt, f.name), f.data);
    await sh(t, 'umount', [mnt]);
    mounted = false;
    await sh(t, 'fsck.ext4', ['-n', '-f', dev]);
    await sh(t, 'mount', ['-t', 'ext4', '-o', 'ro', dev, mnt]);
    mounted = true;
    for (const f of files) t.is(sha256(readFileSync(join(mnt, f.name))), sha256(f.data), `${dev}: ${f.name} after the remount`);
    t.deepEqual(await misplacedInImage(t, join(OUT, `${image}.img`), mnt, files), [], `${dev}: every file's bytes are in ${image}.img where ext4 put them`);
  } finally {
    if (mounted) await sh(t, 'umount', [mnt]);
  }
}

test.serial('a config with a ublk export of one namespace and an nbd export of the other: on each, mkfs.ext4, mount, copy files, unmount, fsck -n clean, and every file in the host\'s backing image where ext4 put it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-exports-'));
  const id = UBLK_ID + 3;
  const ublk = `/dev/ublkb${id}`;
  const socket = join(dir, 'nvme0n2.sock');
  const nbd = '/dev/nbd2';
  const upci = upciRun(t, dir, {
    watchdogMs: 3000,
    devices: [{ address: NVME0, name: 'nvme0', driver: 'nvme', options: { ioQueues: 1, queueDepth: 32 } }],
    exports: [{ ublk: 'nvme0n1', id }, { nbd: 'nvme0n2', socket }],
  });
  await upci.waitFor('the ublk export opened', / export ublk nvme0n1 at \S+ open: /, 240_000);
  const opened = await upci.waitFor('the nbd export opened', / export nbd nvme0n2 at \S+ open: \d+ blocks of (\d+) B/, 240_000);
  const files = (seed: number) => Array.from({ length: 10 }, (_, i) => ({ name: `f${i}`, data: pattern(MiB + 4096 * i, seed + i) }));
  await fileSystemOn(t, ublk, 'nvme0n1', files(3000));
  await sh(t, 'nbd-client', ['-N', 'nvme0n2', '-b', opened[1]!, '-u', socket, nbd]);
  try {
    await fileSystemOn(t, nbd, 'nvme0n2', files(4000));
  } finally {
    await sh(t, 'nbd-client', ['-d', nbd]);
  }
  t.is(await upci.stop(), 0);
  t.false(existsSync(ublk), 'the ublk disk is removed at SIGINT');
  t.false(existsSync(socket), 'the socket file is gone');
});

test.serial('a ublk export of a virtio-blk disk from the config: mkfs.ext4, mount, copy files, unmount, fsck -n clean, and every file in the host\'s backing image where ext4 put it; the disk is removed at SIGINT', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-exports-'));
  const id = UBLK_ID + 4;
  const ublk = `/dev/ublkb${id}`;
  const upci = upciRun(t, dir, {
    watchdogMs: 3000,
    devices: [{ address: VBLK0, name: 'vblk0', driver: 'virtio-blk' }],
    exports: [{ ublk: 'vblk0n1', id }],
  });
  await upci.waitFor('the ublk export opened', / export ublk vblk0n1 at \S+ open: /, 240_000);
  // The disk is 16 MiB: files that fit beside ext4's journal and tables.
  await fileSystemOn(t, ublk, 'vblk0', Array.from({ length: 6 }, (_, i) => ({ name: `v${i}`, data: pattern(MiB + 4096 * i, 5000 + i) })));
  t.is(await upci.stop(), 0);
  t.false(existsSync(ublk), 'the ublk disk is removed at SIGINT');
});

test.serial('a tap export from the config: the TAP interface is made and set up, ping -6 to the link partner over IPv6 link-local answers, 50 MB over TCP arrive intact, no IPv4 on it; the interface is deleted at SIGINT', async (t) => {
  const peer = await KernelPeer.open(KERNEL_NIC);
  t.teardown(() => peer.close());
  const dir = mkdtempSync(join(tmpdir(), 'upci-exports-'));
  const upci = upciRun(t, dir, {
    // As e1000e.test: a healthy driver thread's first seconds in the loaded guest went 1 s without a beat.
    watchdogMs: 3000,
    devices: [{ address: UPCI_NIC, name: 'nic0', driver: 'e1000e' }],
    exports: [{ tap: 'nic0', ifname: 'upci0' }],
  });
  const opened = await upci.waitFor('the export opened', /export tap nic0 at upci0 open: MAC (\S+), up/, 240_000);
  const deadline = Date.now() + 30_000;
  let own = '';
  while (!/inet6 fe80::\S+ scope link(?! tentative)/.test(own) || own.includes('tentative')) {
    if (Date.now() > deadline) return t.fail(`upci0 has no usable link-local address: ${own}`);
    own = await sh(t, 'ip', ['-6', '-o', 'addr', 'show', 'dev', 'upci0', 'scope', 'link'], true);
    await sleep(200);
  }
  t.regex(await sh(t, 'ip', ['-o', 'link', 'show', 'dev', 'upci0']), new RegExp(`link/ether ${opened[1]}`), 'the TAP has the NIC\'s station address');
  const target = await peer.linkLocal();
  const ping6 = (args: string[]) => new Promise<string>((resolve) => execFile('busybox', ['ping6', ...args, `${target}%upci0`], (_e, out) => resolve(out)));
  // Neighbour discovery first (the kernel's first solicitation may go before the NIC filters its group in), bounded.
  t.log('first:', (await ping6(['-c', '1', '-w', '30'])).trim().split('\n').slice(-2).join(' / '));
  const ping = await ping6(['-c', '3', '-W', '10']);
  t.log(ping.trim());
  t.regex(ping, /3 packets transmitted, 3 packets received/);
  t.is(await sh(t, 'ip', ['-4', '-o', 'addr', 'show', 'dev', 'upci0']), '', 'no IPv4 address on the TAP');

  // 50 MB over TCP to a sink beside the link partner: batches from the TAP's fd, and backpressure when the port's transmit buffers run out.
  const sink = peer.spawn(process.execPath, ...tcpSinkScript());
  t.teardown(() => sink.kill());
  const lines: string[] = [];
  createInterface({ input: sink.stdout! }).on('line', (l) => lines.push(l));
  await until('the TCP sink to listen', () => lines.includes('listening'), 30_000);
  const total = 50 * 1024 * 1024;
  const expected = await within(300_000, sendOverTcp(`${target}%upci0`, total), 'the 50 MB never went through the TAP');
  await until('the sink\'s digest', () => lines.some((l) => l.startsWith('{')), 120_000);
  t.deepEqual(JSON.parse(lines.find((l) => l.startsWith('{'))!), { bytes: total, sha256: expected }, '50 MB arrived intact');

  t.is(await upci.stop(), 0, 'upci run exits 0 at SIGINT');
  t.regex(upci.output(), / export tap nic0 at upci0 closed: removed/);
  await t.throwsAsync(sh(t, 'ip', ['link', 'show', 'dev', 'upci0']), undefined, 'the TAP interface is deleted');
});
