/**
 * The event socket (`upci run --events`, actors/event-socket.ts) and its reader (`upci status`,
 * bin/status-command.ts), over an event stream the test makes: the snapshot a peer gets first, live events after
 * it, the socket file's mode, peers that send or do not read dropped while the others go on, and the reader's
 * errors for a missing socket and for a socket that is not upci's.
 */
import test from 'ava';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Subject } from 'rxjs';
import { EventSocket } from '../../actors/event-socket.js';
import type { HostEvent } from '../../actors/events.js';
import { claimWithEvents } from '../../bin/run-command.js';
import { statusCommand } from '../../bin/status-command.js';
import { UpciError } from '../../kernel/errors.js';
import { parsePciAddress, type PciAddress } from '../../kernel/pci-address.js';
import { until, within } from '../support/bounded.js';

const A = parsePciAddress('0000:00:04.0');
const B = parsePciAddress('0000:00:05.0');

const state = (address: PciAddress, s: 'running' | 'failed', incarnation = 0): HostEvent => ({ type: 'state', at: 1, address, driver: 'edu', state: s, incarnation });
const note = (address: PciAddress, message: string): HostEvent => ({ type: 'note', at: 2, address, message });

async function serving(t: { teardown(fn: () => unknown): void }, mode?: string) {
  const events = new Subject<HostEvent>();
  const path = join(mkdtempSync(join(tmpdir(), 'upci-events-')), 'events.sock');
  const socket = await EventSocket.listen(events, path, mode);
  t.teardown(() => socket.close());
  return { events, path, socket };
}

/** A peer's lines as they come. */
function peer(path: string): { lines: string[]; socket: Socket } {
  const socket = createConnection(path);
  const lines: string[] = [];
  createInterface({ input: socket }).on('line', (l) => lines.push(l));
  return { lines, socket };
}

test('a peer gets the latest state of each device first, in one snapshot line, then each event as it happens; the socket is its owner\'s only', async (t) => {
  const { events, path } = await serving(t);
  t.is(statSync(path).mode & 0o777, 0o600);
  events.next(state(A, 'running'));
  events.next(state(B, 'running'));
  events.next(state(A, 'failed', 0));
  events.next(note(A, 'not kept: notes are not state'));
  const { lines, socket } = peer(path);
  t.teardown(() => socket.destroy());
  await until('the snapshot', () => lines.length >= 1, 5000);
  const snapshot = JSON.parse(lines[0]!) as { type: string; events: HostEvent[] };
  t.is(snapshot.type, 'snapshot');
  t.deepEqual(snapshot.events, [state(A, 'failed', 0), state(B, 'running')]);
  events.next(note(B, 'live'));
  await until('the live event', () => lines.length >= 2, 5000);
  t.deepEqual(JSON.parse(lines[1]!), note(B, 'live'));
});

test('--events-mode gives the socket file its mode', async (t) => {
  const { path } = await serving(t, '0660');
  t.is(statSync(path).mode & 0o777, 0o660);
});

test('a peer that sends is dropped; one that does not read is dropped when 1 MiB waits for it; a reading peer gets every event meanwhile', async (t) => {
  const { events, path, socket } = await serving(t);
  const talker = peer(path);
  const sleeper = peer(path);
  const reader = peer(path);
  t.teardown(() => [talker, sleeper, reader].forEach((p) => p.socket.destroy()));
  await until('three snapshots', () => talker.lines.length + sleeper.lines.length + reader.lines.length === 3, 5000);
  const talkerClosed = new Promise((resolve) => talker.socket.once('close', resolve));
  talker.socket.write(Buffer.alloc(64 * 1024, 0x41));
  await within(5000, talkerClosed, 'the talking peer to be dropped');
  sleeper.socket.pause();
  // 4 MiB of events, a few at a time as a host makes them: past what the paused peer's socket and its queue hold,
  // while the reading peer keeps up.
  const big = 'x'.repeat(4000);
  for (let i = 0; i < 1000; i++) {
    events.next(note(A, `${i} ${big}`));
    if (i % 8 === 7) await new Promise((resolve) => setImmediate(resolve));
  }
  // A paused peer sees no close: the server's count says it was dropped.
  await until('the peer that does not read to be dropped', () => socket.stats.dropped === 2, 10_000);
  await until('the reader to have every event', () => reader.lines.length === 1001, 10_000);
  t.is(JSON.parse(reader.lines[1000]!).message, `999 ${big}`);
  t.is(socket.stats.dropped, 2);
});

test('upci status prints the snapshot as upci run prints events and exits 0; --follow prints the events after it until the host stops', async (t) => {
  const { events, path, socket } = await serving(t);
  events.next(state(A, 'running'));
  const printed: string[] = [];
  t.is(await statusCommand([path], (l) => printed.push(l)), 0);
  t.is(printed.length, 1);
  t.regex(printed[0]!, /0000:00:04\.0 edu running \(incarnation 0\)/);
  const followed: string[] = [];
  const following = statusCommand([path, '--follow'], (l) => followed.push(l));
  await until('the snapshot', () => followed.length === 1, 5000);
  events.next(note(A, 'after the snapshot'));
  await until('the live event', () => followed.length === 2, 5000);
  t.regex(followed[1]!, /note after the snapshot/);
  await socket.close();
  t.is(await within(5000, following, 'upci status --follow to end with the host'), 0);
});

test('upci status names what is wrong: no socket there, or a socket that is not upci\'s', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-events-'));
  const missing = join(dir, 'none.sock');
  const e = await t.throwsAsync(statusCommand([missing], () => {}));
  t.regex(e?.message ?? '', /no upci run serves events at .*none\.sock \(ENOENT\)\n {2}fix: start it with `upci run CONFIG --events PATH`/);
  const other = join(dir, 'other.sock');
  const server = createServer((s) => s.end('hello\n'));
  await new Promise<void>((resolve) => server.listen(other, resolve));
  t.teardown(() => server.close());
  const wrong = await t.throwsAsync(statusCommand([other], () => {}));
  t.regex(wrong?.message ?? '', /sent a line that is not JSON: not a upci event socket/);
});

test('upci run --events PATH that cannot be listened on: one UpciError naming the path and the fix, and no device claimed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-events-'));
  const notSocket = join(dir, 'events.sock');
  writeFileSync(notSocket, 'someone else\'s file\n');
  const cases = [
    { path: join(dir, 'missing', 'events.sock'), message: /cannot listen on .*missing\/events\.sock \(ENOENT\)/, fix: /does not exist: create it first \(mkdir -p .*missing\)/ },
    { path: join(notSocket, 'events.sock'), message: /cannot listen on .*events\.sock\/events\.sock \(ENOTDIR\)/, fix: /is not a directory/ },
    { path: notSocket, message: /events\.sock exists and is not a socket/, fix: /remove it, or give another socket path/ },
  ];
  for (const { path, message, fix } of cases) {
    let claims = 0;
    const error = await t.throwsAsync(claimWithEvents(() => {
      claims++;
      throw new Error('claimed a device');
    }, path, undefined), { instanceOf: UpciError });
    t.regex(error!.message, message);
    t.regex((error as UpciError).fix ?? '', fix);
    t.is(claims, 0, `${path}: no device is claimed before the socket listens`);
  }
  t.is(readFileSync(notSocket, 'utf8'), 'someone else\'s file\n', 'the file that is not ours is left as it was');
});
