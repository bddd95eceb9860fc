/**
 * The config's exports under the driver host, without hardware: a test
 * driver on a fake device provides a block device over memory that
 * outlives its incarnations (as a disk does), and crashes when the test
 * says; a minimal NBD client (fixed newstyle, NBD_OPT_GO, simple replies)
 * on the export's socket stays connected across the crash and restart.
 */
import test from 'ava';
import { existsSync, mkdtempSync, statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fromPromise, setup } from 'xstate';
import { parseHostConfig } from '../../actors/config.js';
import type { HostEvent } from '../../actors/events.js';
import { DriverHost } from '../../actors/host.js';
import { BlockGoneError, type BlockDevice } from '../../drivers/block.js';
import { defineDriver, type DriverInput } from '../../drivers/contract.js';
import { PciDevice } from '../../pci/device.js';
import { acceptingDma, fakeDevice } from '../support/fake-device.js';
import { fakeBlockDevice } from '../support/fake-block-device.js';
import { until, within } from '../support/bounded.js';

const BLOCK = 512;
/** The disk: the same blocks for every incarnation. */
const disk = fakeBlockDevice('d0n1', { hangs: false });
/** Makes the first incarnation crash. */
let crash!: (e: Error) => void;
/** Reads of LBA 777 the first incarnation holds until it is taken back (then they fail, as a driver's in-flight requests do). */
let held = 0;

/** Provides `<name>n1` over `disk`; its first incarnation holds reads of LBA 777 and crashes when the test calls crash(). */
const diskDriver = defineDriver({
  name: 'disk',
  description: 'unit-test block driver',
  match: [{ vendor: 0x1234, device: 0x0001 }],
  options: {},
  attach: (bus) => {
    const holding: ((e: Error) => void)[] = [];
    const first = bus.incarnation === 0;
    let gone: BlockGoneError | undefined;
    // As nvme's io.abandon: what is in flight fails, and so does anything after.
    bus.onRelease(() => {
      gone = new BlockGoneError(`${bus.name}n1: the driver was taken back`);
      for (const fail of holding) fail(gone);
    });
    const device: BlockDevice = {
      ...disk.device,
      name: `${bus.name}n1`,
      // Reaching no registered memory, its requests come through read() (the export's thread bounces them): where this test holds one.
      register: () => {
        throw new Error('this test driver serves requests through read() only');
      },
      read: (lba, blocks, into) => {
        if (gone !== undefined) return Promise.reject(gone);
        if (!first || lba !== 777) return disk.device.read(lba, blocks, into);
        held++;
        return new Promise((_, reject) => holding.push(reject));
      },
    };
    bus.provideBlockDevice(device);
    return { first };
  },
  machine: setup({
    types: { input: {} as DriverInput<Record<string, never>, { first: boolean }>, context: {} as DriverInput<Record<string, never>, { first: boolean }> },
    actors: { crashing: fromPromise(({ input }: { input: boolean }) => (input ? new Promise<void>((_, reject) => (crash = reject)) : new Promise<void>(() => {}))) },
  }).createMachine({
    context: ({ input }) => input,
    invoke: { src: 'crashing', input: ({ context }) => context.resources.first },
  }),
});

const A = '0000:00:04.0';
const open = (address: string) => PciDevice.open(address as never, {
  port: {
    name: 'fake',
    open: (a) => {
      const config = Buffer.alloc(256);
      config.writeUInt16LE(0x1234, 0);
      config.writeUInt16LE(0x0001, 2);
      return fakeDevice(a, { intx: 1 }, { dma: acceptingDma() }, config).file;
    },
  },
});

/** A minimal NBD client: negotiates `name` with NBD_OPT_GO, then sends requests and matches replies by handle. */
class NbdClient {
  private buffered = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private next = 1n;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, d]);
      this.wake?.();
    });
  }

  static async connect(path: string, name: string): Promise<NbdClient> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const c = new NbdClient(socket);
    await c.read(18);
    const start = Buffer.alloc(4);
    start.writeUInt32BE(3, 0); // fixed newstyle, no zeroes
    const n = Buffer.from(name);
    const option = Buffer.alloc(16 + 4 + n.length + 2);
    option.writeBigUInt64BE(0x49484156454f5054n, 0);
    option.writeUInt32BE(7, 8); // NBD_OPT_GO
    option.writeUInt32BE(4 + n.length + 2, 12);
    option.writeUInt32BE(n.length, 16);
    n.copy(option, 20);
    socket.write(Buffer.concat([start, option]));
    for (;;) {
      const head = await c.read(20);
      await c.read(head.readUInt32BE(16));
      const type = head.readUInt32BE(12);
      if (type === 1) return c; // NBD_REP_ACK
      if (type >= 0x80000000) throw new Error(`NBD_OPT_GO refused (${type.toString(16)})`);
    }
  }

  private async read(n: number): Promise<Buffer> {
    while (this.buffered.length < n) await new Promise<void>((resolve) => (this.wake = resolve));
    const out = this.buffered.subarray(0, n);
    this.buffered = this.buffered.subarray(n);
    return out;
  }

  /** Sends a request (0 READ, 1 WRITE); the reply's error and data come back in order of the requests' handles. */
  send(type: 0 | 1, offset: number, length: number, data?: Uint8Array): bigint {
    const req = Buffer.alloc(28);
    req.writeUInt32BE(0x25609513, 0);
    req.writeUInt16BE(type, 6);
    const handle = this.next++;
    req.writeBigUInt64BE(handle, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(length, 24);
    this.socket.write(data === undefined ? req : Buffer.concat([req, data]));
    return handle;
  }

  /** The next reply: its handle, error, and `dataLength` bytes of data when it succeeded. */
  async reply(dataLength: number): Promise<{ handle: bigint; error: number; data: Buffer }> {
    const head = await this.read(16);
    const error = head.readUInt32BE(4);
    return { handle: head.readBigUInt64BE(8), error, data: error === 0 ? await this.read(dataLength) : Buffer.alloc(0) };
  }

  close(): void {
    this.socket.destroy();
  }
}

test('an nbd export from the config opens when its provider attaches (socket mode 0600), stays connected across a crash and supervised restart of the provider (the read in flight re-issued to the next incarnation, no error), and its socket is removed at shutdown', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-exports-'));
  const socket = join(dir, 'run', 'd0n1.sock');
  const host = DriverHost.claim(parseHostConfig({
    restart: { initialDelayMs: 10, maxDelayMs: 40, maxRestarts: 2 },
    devices: [{ address: A, name: 'd0', driver: 'disk' }],
    exports: [{ nbd: 'd0n1', socket }],
  }, new Map([[diskDriver.name, diskDriver]])), { open });
  const events: HostEvent[] = [];
  host.events.subscribe((e) => events.push(e));
  t.teardown(() => host.shutdown());
  const exportEvents = () => events.flatMap((e) => (e.type === 'export' ? [`${e.kind} ${e.service} at ${e.target} ${e.phase}: ${e.detail}`] : []));
  host.start();
  await until('the export to open', () => exportEvents().length > 0, 5_000);
  t.deepEqual(exportEvents(), [`nbd d0n1 at ${socket} open: 4096 blocks of 512 B, mode 0600, served in a thread of its own`]);
  t.is(statSync(socket).mode & 0o777, 0o600, 'the socket is its owner\'s only, whatever the umask');

  const client = await within(5_000, NbdClient.connect(socket, 'd0n1'), 'the NBD negotiation never ended');
  t.teardown(() => client.close());
  client.send(1, 3 * BLOCK, BLOCK, new Uint8Array(BLOCK).fill(0x42));
  t.like(await client.reply(0), { handle: 1n, error: 0 });
  disk.storage.fill(0x77, 777 * BLOCK, 778 * BLOCK);
  const inFlight = client.send(0, 777 * BLOCK, BLOCK);
  await until('the read to reach the driver', () => held === 1, 5_000);
  crash(new Error('crash on purpose'));
  const answer = await within(10_000, client.reply(BLOCK), 'the read held by the crashed incarnation was never answered');
  t.is(answer.handle, inFlight);
  t.is(answer.error, 0, 'no error: the read went to the next incarnation');
  t.true(answer.data.every((b) => b === 0x77), 'with the block\'s data');
  t.true(events.some((e) => e.type === 'restart' && e.address === A), 'the provider was restarted');
  t.true(exportEvents().some((l) => /^nbd d0n1 at \S+ followed: incarnation 2 of its driver; 1 request\(s\) waited for it/.test(l)), exportEvents().join('\n'));
  client.send(0, 3 * BLOCK, BLOCK);
  const after = await within(5_000, client.reply(BLOCK), 'a read after the restart was never answered');
  t.is(after.error, 0);
  t.true(after.data.every((b) => b === 0x42), 'the write before the crash reads back through the same connection');

  await host.shutdown();
  t.false(existsSync(socket), 'the socket file is gone');
  t.regex(exportEvents().at(-1)!, /^nbd d0n1 at \S+ closed: removed$/);
});
