/**
 * A NIC driver's packet port as a service (services/service.ts, kind
 * 'packet'). In the driver's thread a LocalPacketSource wraps the driver's
 * PacketBinding (DriverBus.providePacketPort) and is what a consumer in that
 * same thread binds; a consumer in another thread gets a PacketProxy over
 * an export of it: four shared-memory rings (shm/ring.ts) with one slot per
 * frame and no message per frame:
 *
 * - received: (buffer id, offset, buffer bytes, length, handle) per frame.
 *   The frame stays in the driver's receive buffer (DMA memory, a
 *   SharedArrayBuffer): the proxy's RxFrame is a view of the same memory,
 *   made once per buffer and reused. A buffer is posted over the port the
 *   first time one of its frames crosses, then named by id.
 * - returned: the handle of each frame the consumer released; the driver
 *   gets it back (RxFrame.release in its thread) and re-arms its descriptor.
 * - requests: (transmit buffer, length) per frame sent. The proxy owns the
 *   free transmit buffers (the driver's DMA memory, posted by bus address)
 *   and copies each frame into one: the one copy of the transmit path. A
 *   send() batch is published at once, so the driver posts it with one
 *   doorbell.
 * - transmitted: each transmit buffer the device is done with, back to the
 *   proxy's free list; writable() resolves after such a batch.
 *
 * Link changes and filters are messages (rare); the counters are a block of
 * shared memory the driver writes and the consumer reads (shm/counters.ts).
 *
 * A packet port has one consumer at a time (a frame's buffer goes back at
 * its first release): a second export, or an export while a consumer in the
 * driver's thread is bound, is refused. When the incarnation ends, what the
 * rings still hold is lost (PacketSource.lost(): frames received and never
 * delivered, frames sent that the driver never took); the host's port
 * (services/net-port.ts) adds it up with the incarnation's counters.
 */
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import {
  DRIVER_COUNTERS, MAX_FRAME, MIN_FRAME,
  type DriverCounters, type LinkState, type Mac, type PacketBinding, type PacketEndpoint, type PortInfo, type RxFrame, type TransmitBuffers,
} from '../drivers/packet.js';
import { countersOf, createCounters, type CounterBlock } from '../shm/counters.js';
import { createRing, RingConsumer, RingProducer } from '../shm/ring.js';
import type { ServiceExport, ServiceKind } from './service.js';

// Received slot: buffer id, offset, buffer bytes, frame length, handle.
const RECEIVED_WORDS = 5;
// Request slot: transmit buffer index, length.
const REQUEST_WORDS = 2;
/** How often the driver's statistics registers are read into the shared counters. */
const STATS_MS = 250;

/** The one message from the driver's thread: everything the proxy needs. */
export interface PacketServiceSetup {
  readonly name: string;
  readonly info: PortInfo;
  readonly received: SharedArrayBuffer;
  readonly returned: SharedArrayBuffer;
  readonly requests: SharedArrayBuffer;
  readonly transmitted: SharedArrayBuffer;
  readonly transmitBuffers: TransmitBuffers;
  readonly counters: SharedArrayBuffer;
  readonly hardwareCounters: readonly string[];
  /** One Int32: 1 while the driver serves; 0 once it stopped (its buffers may be freed next: what is still in the ring is not delivered). */
  readonly serving: SharedArrayBuffer;
  /** Buffer registrations and link changes one way, filters the other (transferred with the setup). */
  readonly port: MessagePort;
}

type ToConsumer =
  | { readonly type: 'buffer'; readonly id: number; readonly buffer: SharedArrayBuffer }
  | { readonly type: 'link'; readonly link: LinkState };

interface ToDriver {
  readonly type: 'filters';
  readonly unicast: readonly Mac[];
  readonly multicast: readonly Mac[];
}

const slotsFor = (n: number) => 2 ** Math.ceil(Math.log2(Math.max(1, n)));

const layoutOf = (hardware: readonly string[]) => ({ ...DRIVER_COUNTERS, hardware });

/** Where a consumer's port takes an incarnation's frames, link changes and end. */
export interface PacketSink {
  deliver(frame: RxFrame): void;
  setLink(link: LinkState): void;
  /** Transmit buffers came back. */
  wake(): void;
  /** The incarnation's port is gone (its device taken back): `reason` says why. */
  closed(reason: string): void;
}

/** One incarnation's packet port as a consumer binds it: LocalPacketSource in the driver's thread, PacketProxy elsewhere. */
export interface PacketSource {
  readonly name: string;
  readonly info: PortInfo;
  /** The incarnation's counters, live (the driver writes them; readable after the incarnation ended too). */
  readonly counters: DriverCounters;
  /** Frames in the rings that will never be delivered or sent (0 while the port is open). */
  lost(): { readonly rx: number; readonly tx: number };
  /** Starts delivering to `sink`, with the consumer's filters. */
  bind(sink: PacketSink, unicast: readonly Mac[], multicast: readonly Mac[]): void;
  filters(unicast: readonly Mac[], multicast: readonly Mac[]): void;
  /** Copies frames[from..] into free transmit buffers (padded to MIN_FRAME) and posts them; returns how many. */
  post(frames: readonly Uint8Array[], from: number): number;
  /** Transmit buffers post() would fill now (0 once the port stopped): what writable() checks before it waits. */
  readonly transmitFree: number;
  close(reason: string): void;
}

/** What the driver's reports go to: the consumer in this thread, or an export's rings. */
interface DriverSide {
  deliver(frame: RxFrame): void;
  transmitted(index: number): void;
  setLink(link: LinkState): void;
  /** The driver stopped: its buffers are freed next. */
  stopped(): void;
}

/** Copies `frame` into transmit buffer `index`, padded to MIN_FRAME; returns the length to post. */
function fill(bytes: Uint8Array, offset: number, frame: Uint8Array): number {
  bytes.set(frame, offset);
  if (frame.length >= MIN_FRAME) return frame.length;
  bytes.fill(0, offset + frame.length, offset + MIN_FRAME);
  return MIN_FRAME;
}

/**
 * A driver's packet port in its own thread (DriverBus.providePacketPort
 * makes it): the PacketEndpoint the driver reports to, the source a
 * consumer in this thread binds, and what an export serves.
 */
export class LocalPacketSource implements PacketSource {
  readonly endpoint: PacketEndpoint;
  readonly counters: DriverCounters;
  readonly block: CounterBlock<ReturnType<typeof layoutOf>>;
  private side: DriverSide | undefined;
  private consumer: PacketSink | undefined;
  private link: LinkState | undefined;
  private readonly transmitBytes: Uint8Array;
  /** Free transmit buffers, for a consumer in this thread (an export's proxy keeps its own list). */
  private readonly free: Int32Array;
  private freeCount: number;
  private readonly statsTimer: NodeJS.Timeout;
  private running = true;

  constructor(readonly name: string, readonly binding: PacketBinding) {
    this.block = createCounters(layoutOf(binding.hardwareCounters));
    this.counters = this.block.counters as DriverCounters;
    const { buffer, entries } = binding.transmitBuffers;
    this.transmitBytes = new Uint8Array(buffer);
    this.free = new Int32Array(entries);
    for (let i = 0; i < entries; i++) this.free[i] = entries - 1 - i;
    this.freeCount = entries;
    this.statsTimer = setInterval(() => binding.readStats(this.counters.hardware), STATS_MS);
    this.statsTimer.unref();
    this.endpoint = {
      counters: this.counters,
      deliver: (frame) => {
        if (this.side === undefined || !this.running) frame.release();
        else this.side.deliver(frame);
      },
      transmitted: (index) => this.side?.transmitted(index),
      setLink: (link) => {
        this.link = link;
        this.side?.setLink(link);
      },
      unbind: () => this.stopRunning(),
    };
  }

  get info(): PortInfo {
    return this.binding.info;
  }

  lost(): { rx: number; tx: number } {
    return { rx: 0, tx: 0 };
  }

  get transmitFree(): number {
    return this.running ? this.freeCount : 0;
  }

  bind(sink: PacketSink, unicast: readonly Mac[], multicast: readonly Mac[]): void {
    this.claim('a consumer in its own thread');
    this.consumer = sink;
    this.side = {
      deliver: (frame) => sink.deliver(frame),
      transmitted: (index) => {
        this.free[this.freeCount++] = index;
        sink.wake();
      },
      setLink: (link) => sink.setLink(link),
      stopped: () => {},
    };
    this.filters(unicast, multicast);
    if (this.link !== undefined) sink.setLink(this.link);
  }

  filters(unicast: readonly Mac[], multicast: readonly Mac[]): void {
    if (this.running) this.binding.applyFilters(unicast, multicast);
  }

  post(frames: readonly Uint8Array[], from: number): number {
    if (!this.running) return 0;
    const { stride } = this.binding.transmitBuffers;
    let i = from;
    for (; i < frames.length && this.freeCount > 0; i++) {
      const index = this.free[--this.freeCount]!;
      this.binding.transmit(index, fill(this.transmitBytes, index * stride, frames[i]!));
    }
    if (i > from) this.binding.flushTransmit();
    return i - from;
  }

  /** The host took the device back (DriverBus release): the consumer is told. */
  close(reason: string): void {
    this.stopRunning();
    const consumer = this.consumer;
    this.consumer = undefined;
    consumer?.closed(reason);
  }

  /** @internal servePacketPort: the export's rings become where the driver's reports go; `end` when the export stops. */
  attach(side: DriverSide): () => void {
    this.claim('a consumer in another thread');
    this.side = side;
    if (this.link !== undefined) side.setLink(this.link);
    return () => {
      if (this.side === side) this.side = undefined;
    };
  }

  private claim(who: string): void {
    if (this.side !== undefined) {
      throw new Error(`${this.name}: its packet port already has a consumer, so ${who} cannot have it too (a frame's buffer goes back to the driver at its first release: one consumer per port)`);
    }
  }

  private stopRunning(): void {
    if (!this.running) return;
    this.running = false;
    clearInterval(this.statsTimer);
    this.side?.stopped();
  }
}

/** In the provider's thread: a new export of `local` for a consumer in another thread. */
export function servePacketPort(local: PacketSource): ServiceExport<PacketServiceSetup> {
  if (!(local instanceof LocalPacketSource)) throw new Error(`${local.name}: only the driver's own packet port can be exported`);
  const { binding, name } = local;
  // Every slot holds a buffer: never more than the driver's buffers, plus one (a buffer released
  // while its slot is being handled may come back in a new slot before that one is given back).
  const receiveSlots = slotsFor(binding.receiveBuffers + 1);
  const transmitSlots = slotsFor(binding.transmitBuffers.entries + 1);
  const receivedRing = createRing(receiveSlots, RECEIVED_WORDS);
  const returnedRing = createRing(receiveSlots, 1);
  const requestRing = createRing(transmitSlots, REQUEST_WORDS);
  const transmittedRing = createRing(transmitSlots, 1);
  const channel = new MessageChannel();
  const received = RingProducer.claim(receivedRing);
  const returned = RingConsumer.claim(returnedRing);
  const requests = RingConsumer.claim(requestRing);
  const transmitted = RingProducer.claim(transmittedRing);
  // A handle per frame object (drivers reuse one per buffer), an id per buffer.
  const handles = new Map<RxFrame, number>();
  const frames: RxFrame[] = [];
  const bufferIds = new Map<SharedArrayBuffer, number>();
  const state = new Int32Array(new SharedArrayBuffer(4));
  state[0] = 1;
  let exported = true;

  const post = (m: ToConsumer) => channel.port1.postMessage(m);
  const idOf = (buffer: ArrayBufferLike): number => {
    let id = bufferIds.get(buffer as SharedArrayBuffer);
    if (id === undefined) {
      if (!(buffer instanceof SharedArrayBuffer)) throw new Error(`${name}: a received frame is not in shared memory (a driver hands out views of its DMA buffers)`);
      id = bufferIds.size + 1;
      bufferIds.set(buffer, id);
      post({ type: 'buffer', id, buffer });
    }
    return id;
  };
  // Until the driver stops; then what is in the rings stays there (the consumer counts it lost).
  let live = true;

  const detach = local.attach({
    deliver(frame) {
      if (!live) return frame.release();
      let handle = handles.get(frame);
      if (handle === undefined) {
        handle = frames.length;
        frames.push(frame);
        handles.set(frame, handle);
      }
      const { bytes } = frame;
      const id = idOf(bytes.buffer);
      const at = received.reserve();
      // Never: the ring has a slot per receive buffer.
      if (at < 0) throw new Error(`${name}: the received ring is full, with more frames out than the driver's ${binding.receiveBuffers} receive buffers`);
      const w = received.words;
      w[at] = id;
      w[at + 1] = bytes.byteOffset;
      w[at + 2] = bytes.length;
      w[at + 3] = frame.length;
      w[at + 4] = handle;
      received.publish();
    },
    transmitted(index) {
      if (!live) return;
      const at = transmitted.reserve();
      // Never: the ring has a slot per transmit buffer.
      if (at < 0) throw new Error(`${name}: the transmitted ring is full`);
      transmitted.words[at] = index;
      transmitted.publish();
    },
    setLink(link) {
      if (live) post({ type: 'link', link });
    },
    stopped() {
      live = false;
      Atomics.store(state, 0, 0);
    },
  });

  channel.port1.on('message', (m: ToDriver) => local.filters(m.unicast, m.multicast));
  channel.port1.unref();
  returned.start((w, at) => frames[w[at]!]!.release());
  requests.start((w, at) => (live ? binding.transmit(w[at]!, w[at + 1]!) : false), () => binding.flushTransmit());

  return {
    setup: {
      name,
      info: binding.info,
      received: receivedRing,
      returned: returnedRing,
      requests: requestRing,
      transmitted: transmittedRing,
      transmitBuffers: binding.transmitBuffers,
      counters: local.block.buffer,
      hardwareCounters: binding.hardwareCounters,
      serving: state.buffer as SharedArrayBuffer,
      port: channel.port2,
    },
    transfer: [channel.port2],
    stop: () => {
      if (!exported) return;
      exported = false;
      live = false;
      Atomics.store(state, 0, 0);
      detach();
      returned.stop();
      requests.stop();
      received.release();
      transmitted.release();
      channel.port1.close();
    },
  };
}

/** A received frame on the consumer's side: a view of the driver's buffer, one object per buffer, reused. */
class ProxyFrame implements RxFrame {
  length = 0;
  held = false;
  constructor(readonly bytes: Uint8Array, private readonly proxy: PacketProxy, private readonly handle: number) {}
  release(): void {
    if (!this.held) return;
    this.held = false;
    this.proxy.recycle(this.handle);
  }
}

/** One incarnation's packet port, in a consumer's thread, over an export's rings. */
export class PacketProxy implements PacketSource {
  readonly name: string;
  readonly info: PortInfo;
  readonly counters: DriverCounters;
  private readonly received: RingConsumer;
  private readonly returned: RingProducer;
  private readonly requests: RingProducer;
  private readonly transmitted: RingConsumer;
  private readonly transmitBytes: Uint8Array;
  private readonly stride: number;
  /** Free transmit buffers as a stack: free[0..freeCount). */
  private readonly free: Int32Array;
  private freeCount: number;
  private readonly frames: (ProxyFrame | undefined)[] = [];
  private readonly buffers = new Map<number, SharedArrayBuffer>();
  private readonly port: MessagePort;
  private readonly servingFlag: Int32Array;
  private sink: PacketSink | undefined;
  private link: LinkState | undefined;
  private closed = false;

  constructor(setup: PacketServiceSetup) {
    const { transmitBuffers } = setup;
    if (transmitBuffers.stride < MAX_FRAME) throw new Error(`${setup.name}: transmit buffers of ${transmitBuffers.stride} bytes cannot hold a ${MAX_FRAME}-byte frame`);
    this.name = setup.name;
    this.info = setup.info;
    this.counters = countersOf(setup.counters, layoutOf(setup.hardwareCounters)) as DriverCounters;
    this.received = RingConsumer.claim(setup.received);
    this.returned = RingProducer.claim(setup.returned);
    this.requests = RingProducer.claim(setup.requests);
    this.transmitted = RingConsumer.claim(setup.transmitted);
    this.transmitBytes = new Uint8Array(transmitBuffers.buffer);
    this.stride = transmitBuffers.stride;
    this.free = new Int32Array(transmitBuffers.entries);
    for (let i = 0; i < transmitBuffers.entries; i++) this.free[i] = transmitBuffers.entries - 1 - i;
    this.freeCount = transmitBuffers.entries;
    this.servingFlag = new Int32Array(setup.serving);
    this.port = setup.port;
    this.port.on('message', (m: ToConsumer) => {
      if (m.type === 'buffer') {
        this.buffers.set(m.id, m.buffer);
        this.received.resume();
      } else {
        this.link = m.link;
        this.sink?.setLink(m.link);
      }
    });
    this.port.unref();
  }

  /** Starts delivering to `sink`, with the filters the consumer set. */
  bind(sink: PacketSink, unicast: readonly Mac[], multicast: readonly Mac[]): void {
    if (this.sink !== undefined) throw new Error(`${this.name}: this packet proxy is already bound`);
    this.sink = sink;
    this.filters(unicast, multicast);
    if (this.link !== undefined) sink.setLink(this.link);
    this.received.start(this.onReceived);
    this.transmitted.start((w, at) => void (this.free[this.freeCount++] = w[at]!), () => sink.wake());
  }

  filters(unicast: readonly Mac[], multicast: readonly Mac[]): void {
    if (!this.closed) this.port.postMessage({ type: 'filters', unicast, multicast } satisfies ToDriver);
  }

  /** Copies frames[from..] into free transmit buffers (padded to MIN_FRAME) and posts them; returns how many. */
  post(frames: readonly Uint8Array[], from: number): number {
    if (this.closed) return 0;
    const requests = this.requests;
    const w = requests.words;
    let i = from;
    for (; i < frames.length && this.freeCount > 0; i++) {
      const at = requests.reserve();
      // Never: the ring has a slot per transmit buffer.
      if (at < 0) throw new Error(`${this.name}: the request ring is full with a transmit buffer free`);
      const index = this.free[--this.freeCount]!;
      w[at] = index;
      w[at + 1] = fill(this.transmitBytes, index * this.stride, frames[i]!);
      requests.stage();
    }
    // The batch at once: the driver drains it in one go, with one doorbell.
    requests.flush();
    return i - from;
  }

  get transmitFree(): number {
    return this.closed ? 0 : this.freeCount;
  }

  /** @internal ProxyFrame.release */
  recycle(handle: number): void {
    if (this.closed) return;
    const at = this.returned.reserve();
    // Never: the ring has a slot per receive buffer.
    if (at < 0) throw new Error(`${this.name}: the returned ring is full`);
    this.returned.words[at] = handle;
    this.returned.publish();
  }

  /**
   * Frames in the rings that no one will handle: received and not
   * delivered, sent and not taken by the driver. Read again after the close:
   * a driver that still runs may take some of its frames meanwhile (and
   * count them as sent) until it stops.
   */
  lost(): { rx: number; tx: number } {
    return this.closed ? this.inRings() : { rx: 0, tx: 0 };
  }

  /** Frames in the rings now: received and not yet delivered here, sent and not yet taken by the driver. */
  inRings(): { rx: number; tx: number } {
    return { rx: this.received.used, tx: this.requests.used };
  }

  /** Whether the driver still serves (it says so in shared memory when it stops). */
  get driverServing(): boolean {
    return Atomics.load(this.servingFlag, 0) !== 0;
  }

  /**
   * The incarnation's device was taken back: nothing more is delivered or
   * posted, frames the consumer still holds are stale (their release does
   * nothing), and the sink is told.
   */
  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.received.stop();
    this.transmitted.stop();
    this.requests.release();
    this.returned.release();
    for (const frame of this.frames) if (frame !== undefined) frame.held = false;
    this.port.close();
    this.sink?.closed(reason);
  }

  private readonly onReceived = (w: Int32Array, at: number): boolean => {
    // The driver stopped: its buffers may be freed (revoked) any moment now; the rest is counted lost at close().
    if (!this.driverServing) return false;
    const buffer = this.buffers.get(w[at]!);
    // Its registration is still on its way: wait for it (frames stay in order).
    if (buffer === undefined) return false;
    const handle = w[at + 4]!;
    let frame = this.frames[handle];
    if (frame === undefined) frame = this.frames[handle] = new ProxyFrame(new Uint8Array(buffer, w[at + 1]!, w[at + 2]!), this, handle);
    frame.length = w[at + 3]!;
    frame.held = true;
    this.sink!.deliver(frame);
    return true;
  };
}

export const packetService: ServiceKind<PacketSource, PacketServiceSetup> = {
  kind: 'packet',
  noun: 'packet port',
  serve: servePacketPort,
  proxy: (setup) => new PacketProxy(setup),
};
