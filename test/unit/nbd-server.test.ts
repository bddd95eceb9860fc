/**
 * The NBD server (exports/nbd-server.ts) against hostile clients, over a real
 * unix socket, serving two in-memory block devices (exports "a" and "b").
 * In each case the hostile connection costs only itself: the server's
 * memory stays within the bound the module states (its own count,
 * stats.peakConnectionBytes, and the process's ArrayBuffer memory), and a
 * clean client on each export then writes and reads back its data.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdServer, type NbdServerOptions } from '../../exports/nbd-server.js';
import { UpciError } from '../../kernel/errors.js';
import { fakeBlockDevice, type FakeBlockDevice } from '../support/fake-block-device.js';
import { until, within } from '../support/bounded.js';
import { ByteStream, NBD, NbdClient, connectTo, go, greet, option, request } from '../support/nbd-client.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** The server's own constants (exports/nbd-server.ts), for the bounds it states. */
const MAX_REQUEST = 32 * MiB;
const READ_AHEAD = 64 * KiB;
/** What Node's stream hands the reader at once beyond READ_AHEAD: one socket read. */
const SOCKET_READ = 64 * KiB;

interface Served {
  readonly server: NbdServer;
  readonly path: string;
  readonly disks: { readonly a: FakeBlockDevice; readonly b: FakeBlockDevice };
}

async function serve(t: ExecutionContext, options: NbdServerOptions = {}): Promise<Served> {
  const dir = mkdtempSync(join(tmpdir(), 'upci-nbd-'));
  const disks = { a: fakeBlockDevice('disk-a'), b: fakeBlockDevice('disk-b') };
  const path = join(dir, 'nbd.sock');
  const server = await NbdServer.listen(path, [{ name: 'a', device: disks.a.device }, { name: 'b', device: disks.b.device }], options);
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { server, path, disks };
}

let patterns = 0;

/** A clean client on each export writes 16 KiB of a fresh pattern, reads it back, and it is on the device. */
async function cleanClientsWork(t: ExecutionContext, s: Served): Promise<void> {
  for (const name of ['a', 'b'] as const) {
    const n = ++patterns;
    const data = Buffer.alloc(16 * KiB);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + n * 13) & 0xff;
    // LBA 1000 + 32 n: clear of the fake's failing (666..668) and never-completing (777) LBAs.
    const offset = (1000 + 32 * (n % 64)) * 512;
    const client = await NbdClient.open(s.path, name);
    await client.write(offset, data);
    t.deepEqual(await client.read(offset, data.length), data, `a clean client on export ${name} reads back what it wrote`);
    t.deepEqual(Buffer.from(s.disks[name].storage.subarray(offset, offset + data.length)), data, `export ${name}'s device holds it`);
    await client.disconnect();
  }
}

/** A connection that got through the handshake to transmission on `name`, as a hostile client starts. */
async function transmitting(path: string, name = 'a'): Promise<ByteStream> {
  const stream = new ByteStream(await connectTo(path));
  await within(10_000, greet(stream), 'the greeting');
  await within(10_000, go(stream, name), 'NBD_OPT_GO');
  return stream;
}

const closedByServer = (stream: ByteStream, what: string) => within(10_000, stream.closed, `the server to close the connection ${what}`);

test('a clean client: write, read back, flush, trim, and NBD_CMD_DISC; both exports, default limits', async (t) => {
  const s = await serve(t);
  await cleanClientsWork(t, s);
  const c = await NbdClient.open(s.path, 'a');
  t.is(c.size, 4096 * 512);
  t.like(await c.send(NBD.CMD.FLUSH, 0, 0), { error: 0 });
  t.like(await c.send(NBD.CMD.TRIM, 1000 * 512, 32 * 512), { error: 0 });
  t.deepEqual(await c.read(1000 * 512, 512), Buffer.alloc(512), 'trimmed to zeros');
  await c.disconnect();
  t.like(s.server.stats, { dropped: 0, refused: 0, errors: 0 });
  await until('every connection released', () => s.server.stats.open === 0, 10_000);
});

// Serial: it measures the process's ArrayBuffer memory, which concurrent tests would add to.
test.serial('a WRITE announcing 2 GiB is answered EINVAL and its connection closed before any of its payload is held; the server\'s memory does not grow by what the client streams', async (t) => {
  const s = await serve(t);
  const hostile = await transmitting(s.path);
  const before = process.memoryUsage().arrayBuffers;
  hostile.socket.write(request(NBD.CMD.WRITE, 7n, 0, 2 ** 31));
  // Streams the payload, a MiB at a time once the last was taken, until the server closes (or 256 MiB went).
  const chunk = Buffer.alloc(MiB, 0x5a);
  let sent = 0;
  while (sent < 256 * MiB && !hostile.ended) {
    if (!hostile.socket.write(chunk)) await Promise.race([new Promise((resolve) => hostile.socket.once('drain', resolve)), hostile.closed]);
    sent += MiB;
  }
  const grown = process.memoryUsage().arrayBuffers - before;
  t.log(`the client got ${sent / MiB} MiB into its socket before the close; ArrayBuffer memory grew by ${(grown / MiB).toFixed(1)} MiB; peak per connection ${s.server.stats.peakConnectionBytes} B`);
  await closedByServer(hostile, 'after the oversized WRITE');
  t.true(sent < 256 * MiB, 'the server closed the connection while the client was still sending');
  const reply = await hostile.read(16);
  t.is(reply.readUInt32BE(0), NBD.SIMPLE_REPLY_MAGIC);
  t.is(reply.readUInt32BE(4), NBD.EINVAL, 'EINVAL');
  t.is(reply.readBigUInt64BE(8), 7n, 'for the WRITE\'s handle');
  t.true(grown < 16 * MiB, `ArrayBuffer memory grew by ${grown} B`);
  t.true(s.server.stats.peakConnectionBytes <= READ_AHEAD + SOCKET_READ + 4 * KiB, `a connection held at most ${s.server.stats.peakConnectionBytes} B`);
  t.like(s.server.stats, { dropped: 1, inFlight: 0 });
  t.regex(s.server.lastDisconnect ?? '', /WRITE of 2147483648 bytes/);
  await cleanClientsWork(t, s);
});

// Serial: it measures the process's ArrayBuffer memory, which concurrent tests would add to.
test.serial('a client that pipelines reads and never reads the replies stops being read at maxConnectionBytes; memory bounded; other clients unaffected; its close releases it', async (t) => {
  const budget = 4 * MiB;
  const s = await serve(t, { maxConnectionBytes: budget });
  const hostile = await transmitting(s.path);
  hostile.socket.pause();
  const before = process.memoryUsage().arrayBuffers;
  const N = 4000;
  // 4,000 reads of 128 KiB: 500 MiB of replies if the server answered them all.
  hostile.socket.write(Buffer.concat(Array.from({ length: N }, (_, i) => request(NBD.CMD.READ, BigInt(i), 0, 128 * KiB))));
  await until('the server to stop reading the connection', () => s.server.stats.throttled === 1, 10_000);
  const grown = process.memoryUsage().arrayBuffers - before;
  const { requests, peakConnectionBytes } = s.server.stats;
  t.log(`read ${requests} of ${N} requests; peak per connection ${peakConnectionBytes} B; ArrayBuffer memory grew by ${(grown / MiB).toFixed(1)} MiB`);
  t.true(requests < 200, `the server read ${requests} requests, not all ${N}`);
  // The budget, one request admitted at the edge of it, the reply headers, the read buffer.
  t.true(peakConnectionBytes <= budget + 128 * KiB + 16 * 128 + READ_AHEAD + SOCKET_READ, `a connection held at most ${peakConnectionBytes} B`);
  t.true(grown < 16 * MiB, `ArrayBuffer memory grew by ${grown} B`);
  await cleanClientsWork(t, s);
  t.is(s.server.stats.throttled, 1, 'the hostile connection still waits');
  hostile.socket.destroy();
  await until('the hostile connection released', () => s.server.stats.open === 0 && s.server.stats.throttled === 0, 10_000);
  t.is(s.server.stats.dropped, 0, 'a client going away is not a protocol error');
});

test('requests in flight are capped at maxInFlight: the server stops reading the connection; a closed connection counts until its requests settle', async (t) => {
  const s = await serve(t, { maxInFlight: 8 });
  const hostile = await transmitting(s.path);
  // LBA 777 never completes on the fake device.
  hostile.socket.write(Buffer.concat(Array.from({ length: 100 }, (_, i) => request(NBD.CMD.READ, BigInt(i), 777 * 512, 512))));
  await until('8 requests in flight and the connection throttled', () => s.server.stats.inFlight === 8 && s.server.stats.throttled === 1, 10_000);
  t.is(s.server.stats.requests, 9, '8 at the device, the 9th read and waiting for a slot, the other 91 not read');
  await cleanClientsWork(t, s);
  t.is(s.server.stats.inFlight, 8, 'the clean clients\' requests came and went');
  hostile.socket.destroy();
  await until('the hostile connection to stop waiting', () => s.server.stats.throttled === 0, 10_000);
  t.is(s.server.stats.open, 1, 'closed, it is still held: its 8 requests are at the device');
  t.is(s.server.stats.dropped, 0);
});

test('junk bytes (as client flags, as an option, as a request) close only their own connection', async (t) => {
  const s = await serve(t);
  const junk = (n: number) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = (i * 151 + 89) & 0xff;
    return b;
  };
  const flags = new ByteStream(await connectTo(s.path));
  await flags.read(18);
  flags.socket.write(junk(4096));
  await closedByServer(flags, 'after junk as client flags');

  const opt = new ByteStream(await connectTo(s.path));
  await greet(opt);
  opt.socket.write(junk(4096));
  await closedByServer(opt, 'after junk as an option');

  const req = await transmitting(s.path);
  req.socket.write(junk(4096));
  await closedByServer(req, 'after junk as a request');

  t.is(s.server.stats.dropped, 3);
  await cleanClientsWork(t, s);
  await until('every connection released', () => s.server.stats.open === 0, 10_000);
});

test('a malformed NBD_OPT_GO (too short, a name longer than the data, info requests that do not fit) is answered NBD_REP_ERR_INVALID and the negotiation goes on', async (t) => {
  const s = await serve(t);
  const stream = new ByteStream(await connectTo(s.path));
  await greet(stream);
  const nameTooLong = Buffer.alloc(10);
  nameTooLong.writeUInt32BE(1000, 0);
  const infoTooMany = Buffer.from([0, 0, 0, 1, 0x61, 0, 5]);
  for (const data of [Buffer.alloc(2), nameTooLong, infoTooMany]) {
    stream.socket.write(option(NBD.OPT.GO, data));
    const head = await within(10_000, stream.read(20), 'the option reply');
    t.is(head.readUInt32BE(8), NBD.OPT.GO);
    t.is(head.readUInt32BE(12), 0x80000003, 'NBD_REP_ERR_INVALID');
    await stream.read(head.readUInt32BE(16));
  }
  t.is(await within(10_000, go(stream, 'b'), 'a well-formed NBD_OPT_GO'), 4096 * 512);
  stream.socket.destroy();
  t.is(s.server.stats.dropped, 0);
  await cleanClientsWork(t, s);
});

test('an early close (before the greeting was read, mid-option, mid-payload, with replies unread) costs nothing: every connection released, none counted as a protocol error', async (t) => {
  const s = await serve(t);
  const before = s.server.stats.connections;
  (await connectTo(s.path)).destroy();

  const midOption = new ByteStream(await connectTo(s.path));
  await greet(midOption);
  midOption.socket.end(option(NBD.OPT.GO, Buffer.alloc(64)).subarray(0, 40));

  const midPayload = await transmitting(s.path);
  midPayload.socket.write(request(NBD.CMD.WRITE, 1n, 0, 64 * KiB));
  midPayload.socket.end(Buffer.alloc(KiB));

  const unread = await transmitting(s.path);
  unread.socket.pause();
  unread.socket.end(Buffer.concat(Array.from({ length: 50 }, (_, i) => request(NBD.CMD.READ, BigInt(i), 0, 64 * KiB))));

  await until('4 connections seen', () => s.server.stats.connections === before + 4, 10_000);
  unread.socket.destroy();
  await until('every connection released', () => s.server.stats.open === 0, 10_000);
  t.like(s.server.stats, { dropped: 0, inFlight: 0, throttled: 0 });
  await cleanClientsWork(t, s);
});

test('unknown client flags at the handshake: the server closes the connection (the protocol\'s MUST), sending nothing more', async (t) => {
  const s = await serve(t);
  for (const flags of [NBD.CLIENT_FIXED_NEWSTYLE | 4, NBD.CLIENT_NO_ZEROES | 0x80000000]) {
    const stream = new ByteStream(await connectTo(s.path));
    await greet(stream, flags);
    // What a client that took the flags as accepted sends next: it gets no answer.
    stream.socket.write(option(NBD.OPT.LIST));
    await closedByServer(stream, `after client flags 0x${(flags >>> 0).toString(16)}`);
    await t.throwsAsync(stream.read(1), { message: /closed the connection \(0 of 1 bytes/ }, 'no reply to the option');
    t.regex(s.server.lastDisconnect ?? '', new RegExp(`unknown client flags 0x${(flags >>> 0).toString(16)}`));
  }
  t.is(s.server.stats.dropped, 2);
  await cleanClientsWork(t, s);
});

test('unknown command flags and commands, oversized reads, misaligned and out-of-range requests: EINVAL (ENOSPC for a write past the end), and the connection goes on in step', async (t) => {
  const s = await serve(t);
  const c = await NbdClient.open(s.path, 'a');
  const lba8 = 8 * 512;
  const good = Buffer.alloc(512, 0x42);
  await c.write(lba8, good);
  const refused: [string, Promise<{ error: number }>, number][] = [
    ['READ with FUA (not negotiated)', c.send(NBD.CMD.READ, lba8, 512, undefined, NBD.FLAG_FUA), NBD.EINVAL],
    ['READ with flag bit 15', c.send(NBD.CMD.READ, lba8, 512, undefined, 0x8000), NBD.EINVAL],
    // Its payload is read (the next request starts after it) and not written.
    ['WRITE with FUA', c.send(NBD.CMD.WRITE, lba8, 512, Buffer.alloc(512, 0xbd), NBD.FLAG_FUA), NBD.EINVAL],
    ['FLUSH with bit 3', c.send(NBD.CMD.FLUSH, 0, 0, undefined, 8), NBD.EINVAL],
    ['command 99', c.send(99, 0, 0), NBD.EINVAL],
    ['READ over 32 MiB', c.send(NBD.CMD.READ, 0, MAX_REQUEST + 512), NBD.EINVAL],
    ['misaligned READ', c.send(NBD.CMD.READ, 100, 512), NBD.EINVAL],
    ['READ past the end', c.send(NBD.CMD.READ, c.size, 512), NBD.EINVAL],
    ['READ at offset 2^64 - 512', c.send(NBD.CMD.READ, 2n ** 64n - 512n, 512), NBD.EINVAL],
    ['TRIM past the end', c.send(NBD.CMD.TRIM, c.size - 512, 1024), NBD.EINVAL],
    ['WRITE past the end', c.send(NBD.CMD.WRITE, c.size, 512, Buffer.alloc(512, 0xbd)), NBD.ENOSPC],
  ];
  for (const [what, reply, errno] of refused) t.is((await within(10_000, reply, what)).error, errno, what);
  t.deepEqual(await c.read(lba8, 512), good, 'the refused WRITE changed nothing, and the stream is in step');
  t.like(s.server.stats, { errors: refused.length, dropped: 0 });
  await c.disconnect();
  await cleanClientsWork(t, s);
});

test('a client that sends options and never reads the replies stops being read at maxConnectionBytes', async (t) => {
  const budget = 64 * KiB;
  const s = await serve(t, { maxConnectionBytes: budget });
  const hostile = new ByteStream(await connectTo(s.path));
  await greet(hostile);
  hostile.socket.pause();
  const list = option(NBD.OPT.LIST);
  hostile.socket.write(Buffer.concat(Array.from({ length: 100_000 }, () => list)));
  await until('the server to stop reading the connection', () => s.server.stats.throttled === 1, 10_000);
  const peak = s.server.stats.peakConnectionBytes;
  t.log(`peak per connection ${peak} B`);
  // The budget, one option's replies past it, the read buffer.
  t.true(peak <= budget + KiB + READ_AHEAD + SOCKET_READ, `a connection held at most ${peak} B`);
  await cleanClientsWork(t, s);
  hostile.socket.destroy();
  await until('the hostile connection released', () => s.server.stats.open === 0, 10_000);
});

test('maxConnections: a connection past the cap is closed at accept; one slot freed, the next is served', async (t) => {
  const s = await serve(t, { maxConnections: 2 });
  const one = await NbdClient.open(s.path, 'a');
  const two = await NbdClient.open(s.path, 'b');
  const three = new ByteStream(await connectTo(s.path));
  await closedByServer(three, 'past the cap');
  await t.throwsAsync(three.read(1), { message: /0 of 1 bytes/ }, 'not even a greeting');
  t.is(s.server.stats.refused, 1);
  await one.disconnect();
  await until('the slot freed', () => s.server.stats.open === 1, 10_000);
  await two.disconnect();
  await cleanClientsWork(t, s);
});

test('a connection that chooses no export within handshakeTimeoutMs is closed', async (t) => {
  // Long enough for the clean clients' handshakes (three round trips) on a loaded host: they must beat it too.
  const s = await serve(t, { handshakeTimeoutMs: 8000 });
  const idle = new ByteStream(await connectTo(s.path));
  await greet(idle);
  await within(30_000, idle.closed, 'the server to close the connection after the handshake timeout');
  t.regex(s.server.lastDisconnect ?? '', /no export chosen within 8000 ms/);
  t.is(s.server.stats.dropped, 1);
  await cleanClientsWork(t, s);
});

// Serial: it sets the process's umask, which every concurrent test's files would get.
test.serial('the socket file gets its mode (0600 by default, whatever the umask), replaces only a stale socket, and is removed at close only if still its own', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-nbd-mode-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { device } = fakeBlockDevice();
  const exports = [{ name: 'a', device }];
  const umask = process.umask(0);
  try {
    const owner = await NbdServer.listen(join(dir, 'owner.sock'), exports);
    t.is(statSync(owner.socketPath).mode & 0o777, 0o600, 'umask 0: still owner-only');
    const group = await NbdServer.listen(join(dir, 'group.sock'), exports, { mode: '0660' });
    t.is(statSync(group.socketPath).mode & 0o777, 0o660);
    process.umask(0o077);
    const wide = await NbdServer.listen(join(dir, 'wide.sock'), exports, { mode: 0o666 });
    t.is(statSync(wide.socketPath).mode & 0o777, 0o666, 'umask 077: the mode asked for');
    t.deepEqual(readdirSync(dir).sort(), ['group.sock', 'owner.sock', 'wide.sock'], 'no directory of the binding left behind');
    await Promise.all([owner.close(), group.close(), wide.close()]);
    t.deepEqual(readdirSync(dir), [], 'close removed each socket');
  } finally {
    process.umask(umask);
  }

  for (const mode of [0o1000, -1, 1.5, 'rw-------', '0800']) {
    const e = await t.throwsAsync(NbdServer.listen(join(dir, 'bad.sock'), exports, { mode }), { instanceOf: UpciError });
    t.is(e?.code, 'BAD_CONFIG');
    t.regex(e?.message ?? '', /socket mode .* is not permission bits/);
  }
  const e = await t.throwsAsync(NbdServer.listen(join(dir, 'x.sock'), exports, { maxInFlight: 0 }), { instanceOf: UpciError });
  t.regex(e?.message ?? '', /maxInFlight is 0, not a positive integer/);

  const file = join(dir, 'data');
  writeFileSync(file, 'precious');
  const busy = await t.throwsAsync(NbdServer.listen(file, exports), { instanceOf: UpciError });
  t.is(busy?.code, 'BUSY');
  t.is(readFileSync(file, 'utf8'), 'precious', 'a file that is not a socket is left alone');

  // A stale socket (its server gone without removing it, as after a crash) is replaced.
  const path = join(dir, 'shared.sock');
  const other = createServer();
  await new Promise<void>((resolve) => other.listen(join(dir, 'other.sock'), resolve));
  renameSync(join(dir, 'other.sock'), path);
  await new Promise<void>((resolve) => other.close(() => resolve()));
  t.true(statSync(path).isSocket(), 'a stale socket at the path');
  const s = await NbdServer.listen(path, exports);
  t.is(statSync(path).mode & 0o777, 0o600);
  const c = await NbdClient.open(path, 'a');
  await c.disconnect();
  // A newer server's socket at the path: this one's close leaves it.
  const newer = await NbdServer.listen(path, exports);
  await s.close();
  const again = await NbdClient.open(path, 'a');
  await again.disconnect();
  await newer.close();
  t.throws(() => statSync(path), { code: 'ENOENT' });
});

test('READ data and WRITE payloads of up to a slot go through the export\'s registered memory (views of what allocBuffer gave), larger ones the plain path; with more in flight than slots, and slots reused, every byte is right', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-nbd-slots-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const disk = fakeBlockDevice('disk-s');
  let registered: ArrayBufferLike | undefined;
  const seen = { registered: 0, plain: 0 };
  const count = (buffer: Uint8Array | undefined) => (buffer !== undefined && buffer.buffer === registered ? seen.registered++ : seen.plain++);
  const device = Object.assign(Object.create(disk.device) as typeof disk.device, {
    allocBuffer: (bytes: number) => {
      const memory = disk.device.allocBuffer(bytes);
      registered = memory.bytes.buffer;
      return memory;
    },
    read: (lba: number, blocks: number, into?: Uint8Array) => {
      count(into);
      return disk.device.read(lba, blocks, into);
    },
    write: (lba: number, data: Uint8Array) => {
      count(data);
      return disk.device.write(lba, data);
    },
  });
  const server = await NbdServer.listen(join(dir, 's.sock'), [{ name: 's', device }]);
  t.teardown(() => server.close());
  const client = await NbdClient.open(server.socketPath, 's');
  const pattern = (n: number, bytes: number) => Buffer.from(Array.from({ length: bytes }, (_, i) => (i * 31 + n * 7) & 0xff));
  // 96 writes of 8 KiB at once (more than the 64 slots), then 96 reads of them at once.
  const blocks = Array.from({ length: 96 }, (_, n) => ({ offset: (1000 + 16 * n) * 512, data: pattern(n, 8 * KiB) }));
  await within(20_000, Promise.all(blocks.map((b) => client.write(b.offset, b.data))), 'the writes');
  const back = await within(20_000, Promise.all(blocks.map((b) => client.read(b.offset, b.data.length))), 'the reads');
  back.forEach((data, n) => t.deepEqual(data, blocks[n]!.data, `block ${n} reads back what was written`));
  t.true(seen.registered >= 128, `requests on registered memory: ${seen.registered}`);
  // One of 256 KiB, more than a slot: the plain path, and still right.
  const big = pattern(99, 256 * KiB);
  const plainBefore = seen.plain;
  await client.write(2048 * 512, big);
  t.deepEqual(await client.read(2048 * 512, big.length), big);
  t.is(seen.plain - plainBefore, 2, 'the 256 KiB write and read took the plain path');
  await client.disconnect();
});
