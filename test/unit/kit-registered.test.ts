/**
 * The driver kit's registered memory (drivers/kit/registered.ts) on a fake
 * DMA tag and a fake device with two trackers: registrations of the same
 * memory share one map, unloaded only once the last registration is gone
 * and no request uses it; a request's end reaches its registration's
 * `ends` with its tag and error; bad or stale requests are refused,
 * counted, with nothing submitted. A promise request over several commands
 * settles once the last ended, with the first error; its buffer in
 * registered memory is given where it is and held until then; failPending()
 * fails what has not ended.
 */
import test from 'ava';
import type { DmaTag } from '../../pci/bus-dma.js';
import { RegisteredBlockDevice, RegisteredRequests, type Registration } from '../../drivers/kit/registered.js';
import { Trackers } from '../../drivers/kit/tracker.js';

interface FakeMap { isLoaded: boolean; unloads: number }

function fakeTag(): { tag: DmaTag; maps: FakeMap[] } {
  const maps: FakeMap[] = [];
  const tag = {
    createMap: () => ({
      load: () => {
        const bus = 0x1_0000_0000 * (maps.length + 1);
        const map = { isLoaded: true, unloads: 0, segments: [{}], busAddress: () => bus, unload: () => { map.isLoaded = false; map.unloads++; } };
        maps.push(map);
        return map;
      },
    }),
  } as unknown as DmaTag;
  return { tag, maps };
}

class FakeDisk extends RegisteredBlockDevice {
  readonly trackers = new Trackers(2);
  readonly requests = new RegisteredRequests(2);
  /** What reached the "device": write, lba, blocks, bus address. */
  readonly submitted: [boolean, number, number, number][] = [];
  gone: string | undefined;
  constructor(tag: DmaTag) {
    super({ name: 'fake0', blockSize: 512, blockCount: 1024, canDiscard: false, maxTransferBytes: 65536 }, tag);
  }
  protected get goneReason() { return this.gone; }
  protected issueRegistered(registration: Registration, write: boolean, lba: number, blocks: number, offset: number, tag: number): boolean {
    const id = this.trackers.take();
    if (id < 0) return false;
    this.submitted.push([write, lba, blocks, registration.mapping.bus + offset]);
    this.began(this.requests, id, registration, write, lba, blocks, tag);
    return true;
  }
  /** The device completes tracker `id`. */
  complete(id: number, error?: Error): void {
    this.trackers.give(id);
    this.requests.end(id, error);
  }
  /** A promise request of `commands` commands (settled()), with the `done` and `direct` its issue got. */
  promise(commands: number, buffer?: Uint8Array) {
    let done!: (e: Error | undefined) => void;
    let direct = 0;
    const settled = this.settled('read', 0, 1, buffer, 4, commands, (d, at) => {
      done = d;
      direct = at;
    });
    return { settled, done, direct };
  }
  read(): Promise<Uint8Array> { throw new Error('not used'); }
  write(): Promise<void> { throw new Error('not used'); }
  flush(): Promise<void> { throw new Error('not used'); }
  discard(): Promise<void> { throw new Error('not used'); }
}

test('registrations of one memory share one map; it is unloaded once the last is gone and its last request ended', (t) => {
  const { tag, maps } = fakeTag();
  const disk = new FakeDisk(tag);
  const memory = new SharedArrayBuffer(65536);
  const a = disk.register(memory);
  const b = disk.register(memory);
  t.is(maps.length, 1, 'one map for both');
  const ends: [number, Error | undefined][] = [];
  b.ends.subscribe((e) => ends.push([e.tag, e.error]));
  t.true(b.write(8, 2, 4096, 77));
  t.deepEqual(disk.submitted, [[true, 8, 2, 0x1_0000_0000 + 4096]]);
  a.unregister();
  b.unregister();
  t.true(maps[0]!.isLoaded, 'a request is still in flight on it');
  const failure = new Error('device error');
  disk.complete(0, failure);
  t.deepEqual(ends, [[77, failure]]);
  t.is(maps[0]!.unloads, 1);
  t.is(disk.trackers.outstanding, 0);
  disk.register(memory).unregister();
  t.is(maps.length, 2, 'registered again: a new map');
  t.is(maps[1]!.unloads, 1);
});

test('requests out of range, on an unregistered buffer or with every tracker taken are refused or deferred, nothing submitted', (t) => {
  const { tag } = fakeTag();
  const disk = new FakeDisk(tag);
  const r = disk.register(new SharedArrayBuffer(8192));
  t.throws(() => r.read(1023, 2, 0, 1), { message: /fake0/ });
  t.throws(() => r.read(0, 1, 8192, 1), { message: /fake0/ });
  t.true(r.read(0, 1, 0, 1));
  t.true(r.read(1, 1, 512, 2));
  t.false(r.read(2, 1, 1024, 3), 'both trackers taken');
  r.unregister();
  t.throws(() => r.read(0, 1, 0, 4), { message: /no longer registered/ });
  t.is(disk.refused, 3);
  t.is(disk.submitted.length, 2);
  disk.gone = 'the device was reset';
  t.throws(() => disk.register(new SharedArrayBuffer(4096)), { message: 'fake0: the device was reset' });
});

test('a promise request settles once its last command ended, with the first error; registered memory is given where it is, held until the end; failPending() fails the rest', async (t) => {
  const { tag, maps } = fakeTag();
  const disk = new FakeDisk(tag);
  const memory = new SharedArrayBuffer(8192);
  const registration = disk.register(memory);
  let settledYet = false;
  const first = new Error('first');
  const held = disk.promise(3, new Uint8Array(memory, 512, 1024));
  void held.settled.catch(() => undefined).finally(() => (settledYet = true));
  t.is(held.direct, 0x1_0000_0000 + 512, 'the bus address of the buffer inside registered memory');
  registration.unregister();
  held.done(undefined);
  held.done(first);
  held.done(new Error('second'));
  await t.throwsAsync(held.settled, { is: first });
  t.true(settledYet);
  t.is(maps[0]!.unloads, 1, 'unloaded once the request ended');
  const bounced = disk.promise(2, new Uint8Array(1024));
  t.is(bounced.direct, -1, 'not registered memory: bounced');
  bounced.done(undefined);
  let early = false;
  void bounced.settled.then(() => (early = true), () => (early = true));
  await Promise.resolve();
  t.false(early, 'one command of two ended: not settled');
  const gone = new Error('gone');
  disk.failPending(() => gone);
  await t.throwsAsync(bounced.settled, { is: gone });
  const ok = disk.promise(1);
  ok.done(undefined);
  await t.notThrowsAsync(ok.settled);
});
