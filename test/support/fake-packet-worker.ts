/**
 * A worker thread serving a fake NIC (memory, no hardware) through
 * services/packet-service.ts, for the proxy's unit tests. Its "wire" is the
 * test's commands:
 * - {type:'receive', count, from, drop}: delivers frames numbered
 *   from..from+count-1 (the number in bytes 0..3, the length 60 + n % 64),
 *   each in a free buffer of its pool. With none free it waits for one, or
 *   with `drop` it drops the frame and counts it (rx.noBuffer), as a NIC's
 *   ring runs dry. A released buffer is checked for the consumer's
 *   mark (byte 2047 = 0xab): the consumer wrote into this thread's memory.
 * - {type:'complete', count}: the "device" finishes the oldest `count`
 *   transmitted frames (keeps each frame's bytes as posted, padding
 *   included, then gives the buffer back with garbage in it, as a NIC's
 *   buffer holds the last frame: a sender that does not pad with zeros
 *   sends it); {type:'link', up}; {type:'stop'} (the driver stops:
 *   PacketEndpoint.unbind); {type:'report'} answers with what it saw.
 * The port is served as the services would, through packetService.serve.
 * It counts the messages this thread posts.
 */
import { MessagePort, parentPort, workerData } from 'node:worker_threads';
import { LocalPacketSource, packetService } from '../../services/packet-service.js';
import type { LinkState, Mac, PacketBinding, RxFrame } from '../../drivers/packet.js';
import { allocShared } from '../../shm/mapping.js';
import { ringWakeUps } from '../../shm/ring.js';
import type { WakeUps } from './wake-ups.js';

export interface FakeNicOptions {
  readonly receiveBuffers: number;
  readonly transmitBuffers: number;
  readonly incarnation: number;
}

export type FakeNicCommand =
  | { readonly type: 'receive'; readonly count: number; readonly from: number; readonly drop: boolean }
  | { readonly type: 'complete'; readonly count: number }
  | { readonly type: 'link'; readonly up: boolean }
  | { readonly type: 'stop' }
  | { readonly type: 'report' };

export interface FakeNicReport {
  readonly type: 'report';
  readonly delivered: number;
  readonly released: number;
  /** Released buffers that carried the consumer's mark. */
  readonly marked: number;
  /** The frames the device transmitted, in order, each the bytes of its posted length. */
  readonly transmitted: readonly Uint8Array[];
  readonly flushes: number;
  readonly filters: { readonly unicast: readonly Mac[]; readonly multicast: readonly Mac[] } | undefined;
  readonly posted: number;
  /** This thread's ring wake-ups (shm/ring.ts ringWakeUps). */
  readonly wakeUps: WakeUps;
}

const BUFFER = 2048;
const MARK = 0xab;
const options = workerData as FakeNicOptions;

let posted = 0;
const post = MessagePort.prototype.postMessage;
MessagePort.prototype.postMessage = function (this: MessagePort, ...args: Parameters<MessagePort['postMessage']>) {
  posted++;
  return post.apply(this, args);
};

const rxMemory = allocShared(options.receiveBuffers * BUFFER);
const words = new Uint32Array(rxMemory);
const free: number[] = Array.from({ length: options.receiveBuffers }, (_, i) => options.receiveBuffers - 1 - i);
let delivered = 0;
let released = 0;
let marked = 0;

class FakeFrame implements RxFrame {
  length = 0;
  held = false;
  readonly bytes: Uint8Array;
  constructor(readonly index: number) {
    this.bytes = new Uint8Array(rxMemory, index * BUFFER, BUFFER);
  }
  release(): void {
    if (!this.held) return;
    this.held = false;
    released++;
    if (this.bytes[BUFFER - 1] === MARK) marked++;
    this.bytes[BUFFER - 1] = 0;
    free.push(this.index);
  }
}
const frames = Array.from({ length: options.receiveBuffers }, (_, i) => new FakeFrame(i));

const txMemory = allocShared(options.transmitBuffers * BUFFER);
/** What a used transmit buffer holds until the next frame overwrites it (never zeros: see 'complete'). */
const GARBAGE = 0xee;
const txBytes = new Uint8Array(txMemory).fill(GARBAGE);
const posting: number[][] = [];
const inFlight: [number, number][] = [];
const transmitted: Uint8Array[] = [];
let flushes = 0;
let filters: FakeNicReport['filters'];

const binding: PacketBinding = {
  info: { mac: '02:00:00:00:00:01', macSource: 'fake', phyId: '0000:0000', interrupt: 'poll', incarnation: options.incarnation, rxRing: options.receiveBuffers, txRing: options.transmitBuffers },
  receiveBuffers: options.receiveBuffers,
  transmitBuffers: { buffer: txMemory, stride: BUFFER, entries: options.transmitBuffers },
  transmit: (index, length) => void posting.push([index, length]),
  flushTransmit: () => {
    flushes++;
    inFlight.push(...posting.splice(0).map(([i, l]) => [i, l] as [number, number]));
  },
  applyFilters: (unicast, multicast) => void (filters = { unicast, multicast }),
  hardwareCounters: ['reads'],
  readStats: (into) => void (into.reads = (into.reads ?? 0) + 1),
};

const local = new LocalPacketSource(`fake${options.incarnation}`, binding);
const served = packetService.serve(local);
const link = (up: boolean): LinkState => ({ up, speedMbps: up ? 1000 : undefined, fullDuplex: up, phyLink: up, autonegComplete: up });
parentPort!.postMessage({ type: 'setup', setup: served.setup }, [...served.transfer]);
local.endpoint.setLink(link(true));

parentPort!.on('message', (m: FakeNicCommand) => {
  const { endpoint } = local;
  switch (m.type) {
    case 'receive': {
      const end = m.from + m.count;
      const receive = (from: number) => {
        for (let n = from; n < end; n++) {
          const index = free.pop();
          if (index === undefined) {
            if (!m.drop) return void setImmediate(() => receive(n));
            endpoint.counters.rx.noBuffer++;
            continue;
          }
          const frame = frames[index]!;
          words[(index * BUFFER) / 4] = n;
          frame.length = 60 + (n % 64);
          frame.held = true;
          delivered++;
          endpoint.counters.rx.frames++;
          endpoint.deliver(frame);
        }
      };
      return receive(m.from);
    }
    case 'complete':
      for (const [index, length] of inFlight.splice(0, m.count)) {
        transmitted.push(txBytes.slice(index * BUFFER, index * BUFFER + length));
        txBytes.fill(GARBAGE, index * BUFFER, (index + 1) * BUFFER);
        endpoint.counters.tx.frames++;
        endpoint.transmitted(index);
      }
      return;
    case 'link':
      return endpoint.setLink(link(m.up));
    case 'stop':
      return endpoint.unbind();
    case 'report':
      return parentPort!.postMessage({ type: 'report', delivered, released, marked, transmitted, flushes, filters, posted: posted + 1, wakeUps: ringWakeUps() } satisfies FakeNicReport);
  }
});
