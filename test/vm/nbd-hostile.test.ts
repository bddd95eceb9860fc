/**
 * The NBD server against hostile clients with the kernel's nbd client as the
 * clean one, in a guest with little memory (run it with --mem 512: a server
 * that buffered what a hostile client sends would be OOM-killed there). Two
 * in-memory exports; hostile clients are processes of their own
 * (nbd-hostile-client.ts), so this process's memory is the server's.
 */
import test from 'ava';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { NbdServer } from '../../exports/nbd-server.js';
import { fakeBlockDevice } from '../support/fake-block-device.js';
import { until, within } from '../support/bounded.js';

const MiB = 1024 * 1024;
const exec = promisify(execFile);
const hostileScript = fileURLToPath(new URL('./nbd-hostile-client.js', import.meta.url));
/** The module's stated bound per connection with the default limits (exports/nbd-server.ts), and the server's (8 connections). */
const CONNECTION_BOUND = 32.4 * MiB;
const SERVER_BOUND = 8 * CONNECTION_BOUND;

function hostile(mode: string, socket: string, exportName = 'a'): { child: ChildProcess; done: Promise<{ code: number | null; out: string }> } {
  const child = spawn(process.execPath, [hostileScript, mode, socket, exportName], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return { child, done: new Promise((resolve) => child.on('close', (code) => resolve({ code, out: out.trim() }))) };
}

test.serial('NBD hostile clients (a 2 GiB WRITE, one that never reads its replies, junk, an early close, unknown client flags) each cost only their connection; the server stays within its stated memory bound; the kernel\'s nbd client on both exports reads back what it wrote', async (t) => {
  const disks = { a: fakeBlockDevice('a'), b: fakeBlockDevice('b') };
  const dir = mkdtempSync(join(tmpdir(), 'upci-nbd-'));
  const socket = join(dir, 'nbd.sock');
  const server = await NbdServer.listen(socket, [{ name: 'a', device: disks.a.device }, { name: 'b', device: disks.b.device }]);
  const connected: string[] = [];
  const children: ChildProcess[] = [];
  t.teardown(async () => {
    for (const c of children) c.kill('SIGKILL');
    for (const dev of connected) await exec('nbd-client', ['-d', dev]).catch(() => undefined);
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const base = process.memoryUsage.rss();
  let peak = base;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 10);
  t.teardown(() => clearInterval(sampler));

  for (const [name, dev] of [['a', '/dev/nbd0'], ['b', '/dev/nbd1']] as const) {
    await exec('nbd-client', ['-N', name, '-b', '512', '-u', socket, dev], { timeout: 60_000 });
    connected.push(dev);
  }

  const neverRead = hostile('never-read', socket, 'a');
  children.push(neverRead.child);
  await until('the never-reading client throttled', () => server.stats.throttled >= 1, 120_000, 20);
  const others = ['huge-write', 'junk', 'early-close', 'unknown-flags'].map((mode, i) => {
    const h = hostile(mode, socket, i % 2 === 0 ? 'a' : 'b');
    children.push(h.child);
    return h.done;
  });
  for (const r of await within(240_000, Promise.all(others), 'the hostile clients to finish')) {
    t.log(r.out);
    t.is(r.code, 0, r.out);
  }
  t.is(server.stats.throttled, 1, 'the never-reading client is still held, not read');

  // The kernel's client on each export: 1 MiB at 1 MiB (LBAs 2048..4095, clear of the fake's failing ones), direct I/O.
  for (const [name, dev, seed] of [['a', '/dev/nbd0', 11], ['b', '/dev/nbd1', 97]] as const) {
    const data = Buffer.alloc(MiB);
    for (let i = 0; i < data.length; i++) data[i] = (i * seed + (i >> 9)) & 0xff;
    const file = join(dir, `pattern-${name}`);
    const back = join(dir, `back-${name}`);
    writeFileSync(file, data);
    await exec('dd', [`if=${file}`, `of=${dev}`, 'bs=64k', 'seek=16', 'oflag=direct', 'conv=fsync'], { timeout: 120_000 });
    await exec('dd', [`if=${dev}`, `of=${back}`, 'bs=64k', 'skip=16', 'count=16', 'iflag=direct'], { timeout: 120_000 });
    t.true(readFileSync(back).equals(data), `the kernel's client on export ${name} reads back what it wrote`);
    t.true(Buffer.from(disks[name].storage.subarray(MiB, 2 * MiB)).equals(data), `export ${name}'s device holds it`);
  }

  const { peakConnectionBytes, dropped } = server.stats;
  t.log(`server RSS ${(base / MiB).toFixed(1)} MiB at the start, peak ${(peak / MiB).toFixed(1)} MiB (+${((peak - base) / MiB).toFixed(1)}); the most one connection held ${(peakConnectionBytes / MiB).toFixed(2)} MiB; ${JSON.stringify(server.stats)}`);
  t.true(peakConnectionBytes <= CONNECTION_BOUND, `a connection held at most ${peakConnectionBytes} B`);
  t.true(peak - base <= SERVER_BOUND, `the server's RSS grew by ${peak - base} B`);
  t.is(dropped, 3, 'the 2 GiB WRITE, the junk and the unknown flags were dropped; the early close was the client\'s');

  neverRead.child.kill('SIGKILL');
  await until('the never-reading connection released', () => server.stats.open === 2 && server.stats.throttled === 0, 60_000, 20);
  for (const dev of connected.splice(0)) await exec('nbd-client', ['-d', dev], { timeout: 60_000 });
});
