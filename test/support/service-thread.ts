/**
 * A driver thread on a fake device, for the service layer's unit tests
 * (test/unit/services.test.ts): a worker with a DriverBus (AttachedBus over
 * test/support/fake-device.ts) whose services go through its own link to
 * the test's ServiceRegistry (workerData.services), as in
 * workers/driver-thread-body.ts. The test drives it with commands; each gets one
 * reply, {id, value} or {id, error: {name, message}}. It counts the
 * messages it posts on any port other than those replies.
 */
import { MessagePort, parentPort, workerData } from 'node:worker_threads';
import { AttachedBus } from '../../workers/driver-bus.js';
import { DeviceMeter } from '../../actors/meter.js';
import { ThreadServices } from '../../services/service.js';
import type { BlockDevice } from '../../drivers/block.js';
import type { PacketBinding, PacketPort, RxFrame } from '../../drivers/packet.js';
import { allocShared } from '../../shm/mapping.js';
import { ringWakeUps } from '../../shm/ring.js';
import type { WakeUps } from './wake-ups.js';
import { acceptingDma, fakeDevice, openFake } from './fake-device.js';
import { fakeBlockDevice, type FakeBlockDevice } from './fake-block-device.js';

export type ServiceCommand =
  /** Provides an in-memory disk `name` whose blocks all hold `fill` (with `hangs: false`, one that completes LBA 777 too). */
  | { readonly cmd: 'provide'; readonly name: string; readonly fill: number; readonly hangs?: boolean }
  /** The driver's side of a take-back: DriverBus.release (what it provides is withdrawn). */
  | { readonly cmd: 'release' }
  /** Writes block `lba` of `name` (bus.blockDevice) full of `byte`, from shared memory or a plain array. */
  | { readonly cmd: 'write'; readonly name: string; readonly lba: number; readonly byte: number; readonly shared: boolean }
  /** The first byte of block `lba` of `name`, read through bus.blockDevice. */
  | { readonly cmd: 'read'; readonly name: string; readonly lba: number }
  /** Posts a read of `name` that the fake never completes (LBA 777); 'settled' tells how it ended. */
  | { readonly cmd: 'hang'; readonly name: string }
  | { readonly cmd: 'settled' }
  /** Whether bus.blockDevice(name) is the object the first read/write of this thread got; `old` retries a read on that first one. */
  | { readonly cmd: 'same'; readonly name: string }
  | { readonly cmd: 'old' }
  /** The first byte of block `lba` of the disk this thread provides, read in memory. */
  | { readonly cmd: 'peek'; readonly lba: number }
  /** Provides a fake NIC's packet port (bus.providePacketPort, this bus's name 'fixture'), 16 receive buffers, link up. */
  | { readonly cmd: 'provide-packets' }
  /** The fake NIC receives frames numbered from..from+count-1 (bytes 0..3), each as soon as a buffer is free. */
  | { readonly cmd: 'deliver'; readonly from: number; readonly count: number }
  /** Takes packet port `name` (bus.packetPort), releasing each frame after checking its number follows the last. */
  | { readonly cmd: 'consume-packets'; readonly name: string }
  /** What the consumed port saw: attached now, frames, frames out of order. */
  | { readonly cmd: 'packets' }
  | { readonly cmd: 'stats' };

export interface PacketsSeen {
  readonly attached: boolean;
  readonly frames: number;
  readonly outOfOrder: number;
  readonly last: number;
}

export interface ServiceThreadStats {
  readonly liveExports: number;
  /** MessagePorts this thread listens on (an export's own port among them). */
  readonly openPorts: number;
  /** Messages posted on any port but the replies to the test. */
  readonly servicePosts: number;
  /** This thread's ring wake-ups (shm/ring.ts ringWakeUps). */
  readonly wakeUps: WakeUps;
}

let posted = 0;
let replies = 0;
const post = MessagePort.prototype.postMessage;
MessagePort.prototype.postMessage = function (this: MessagePort, ...args: Parameters<MessagePort['postMessage']>) {
  posted++;
  return post.apply(this, args);
};

const services = new ThreadServices(workerData.services as MessagePort);
const device = openFake(fakeDevice('0000:00:0b.0', {}, { dma: acceptingDma() }));
const bus = new AttachedBus(device, 0, {
  name: 'fixture', watchdogMs: 10_000, services, meter: new DeviceMeter(), onStall: () => {}, onNote: () => {},
});
let disk: FakeBlockDevice | undefined;
let nic: ReturnType<typeof fakeNic> | undefined;
let consumed: PacketPort | undefined;
const seen = { frames: 0, outOfOrder: 0, last: -1 };

/** A NIC of memory: 16 receive buffers of 2 KiB, 4 transmit buffers nobody sends from here. */
function fakeNic() {
  const BUFFER = 2048;
  const rx = allocShared(16 * BUFFER);
  const free = Array.from({ length: 16 }, (_, i) => 15 - i);
  const frames = Array.from({ length: 16 }, (_, index): RxFrame => ({
    bytes: new Uint8Array(rx, index * BUFFER, BUFFER),
    length: 60,
    release: () => void free.push(index),
  }));
  const binding: PacketBinding = {
    info: { mac: '02:00:00:00:00:02', macSource: 'fake', phyId: '0000:0000', interrupt: 'poll', incarnation: 0, rxRing: 16, txRing: 4 },
    receiveBuffers: 16,
    transmitBuffers: { buffer: allocShared(4 * BUFFER), stride: BUFFER, entries: 4 },
    transmit: () => {},
    flushTransmit: () => {},
    applyFilters: () => {},
    hardwareCounters: [],
    readStats: () => {},
  };
  const endpoint = bus.providePacketPort(binding);
  endpoint.setLink({ up: true, speedMbps: 1000, fullDuplex: true, phyLink: true, autonegComplete: true });
  const deliver = (n: number, end: number): void => {
    for (; n < end; n++) {
      const index = free.pop();
      if (index === undefined) return void setTimeout(() => deliver(n, end), 1);
      new DataView(rx, index * BUFFER, 4).setUint32(0, n, true);
      endpoint.counters.rx.frames++;
      endpoint.deliver(frames[index]!);
    }
  };
  return { deliver };
}
let first: BlockDevice | undefined;
let hung: Promise<unknown> | undefined;

const firstByte = async (name: string, lba: number) => {
  const target = await bus.blockDevice(name, 10_000);
  first ??= target;
  return (await target.read(lba, 1))[0];
};

async function run(c: ServiceCommand): Promise<unknown> {
  switch (c.cmd) {
    case 'provide':
      disk = fakeBlockDevice(c.name, { hangs: c.hangs ?? true });
      disk.storage.fill(c.fill);
      return bus.provideBlockDevice(disk.device);
    case 'release': return bus.release();
    case 'write': {
      const target = await bus.blockDevice(c.name, 10_000);
      first ??= target;
      const data = c.shared ? new Uint8Array(allocShared(4096), 0, 512) : new Uint8Array(512);
      return target.write(c.lba, data.fill(c.byte));
    }
    case 'read': return firstByte(c.name, c.lba);
    case 'hang': {
      const target = await bus.blockDevice(c.name, 10_000);
      first ??= target;
      hung = target.read(777, 1);
      hung.catch(() => {});
      return;
    }
    case 'settled':
      try {
        await hung;
        return 'resolved';
      } catch (e) {
        return { name: (e as Error).name, message: (e as Error).message };
      }
    case 'same': return (await bus.blockDevice(c.name, 10_000)) === first;
    case 'old':
      try {
        await first!.read(0, 1);
        return 'resolved';
      } catch (e) {
        return (e as Error).name;
      }
    case 'peek': return disk!.storage[c.lba * 512];
    case 'provide-packets':
      nic = fakeNic();
      return;
    case 'deliver': return nic!.deliver(c.from, c.from + c.count);
    case 'consume-packets':
      consumed = bus.packetPort(c.name);
      consumed.frames.subscribe((frame) => {
        const n = new DataView(frame.bytes.buffer, frame.bytes.byteOffset, 4).getUint32(0, true);
        if (n !== seen.last + 1) seen.outOfOrder++;
        seen.last = n;
        seen.frames++;
        frame.release();
      });
      return;
    case 'packets': return { attached: consumed?.attached !== undefined, ...seen } satisfies PacketsSeen;
    case 'stats': {
      const openPorts = process.getActiveResourcesInfo().filter((r) => r === 'MessagePort').length;
      return { liveExports: services.liveExports, openPorts, servicePosts: posted - replies, wakeUps: ringWakeUps() } satisfies ServiceThreadStats;
    }
  }
}

parentPort!.on('message', (m: ServiceCommand & { id: number }) => {
  void run(m).then(
    (value) => ({ id: m.id, value }),
    (e: unknown) => ({ id: m.id, error: { name: (e as Error).name, message: (e as Error).message } }),
  ).then((reply) => {
    replies++;
    parentPort!.postMessage(reply);
  });
});
