/**
 * The packet API a NIC driver provides to programs and other actors in the
 * host (the TAP export serves it to the kernel). Two sides:
 *
 * - The driver's: each incarnation offers a PacketBinding with
 *   DriverBus.providePacketPort and reports to the PacketEndpoint it gets
 *   back: received frames by reference (views of its receive buffers),
 *   transmit buffers given back, link changes, counters.
 * - The consumer's: a PacketPort (the host's, by the config entry's name:
 *   DriverHost.packetPort), which outlives the incarnations. Frames are
 *   views of the driver's receive buffers (no copy, in any thread); send()
 *   copies each frame once, into a transmit buffer the driver posts by its
 *   bus address.
 *
 * Between the two, services/packet-service.ts: shared-memory rings, one slot
 * per frame each way, and a message only for what is rare (link changes,
 * filters).
 */
import type { Observable } from 'rxjs';

export type Mac = readonly [number, number, number, number, number, number];

export function formatMac(mac: Mac): string {
  return mac.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

export function parseMac(text: string): Mac {
  const parts = text.trim().split(':').map((p) => Number.parseInt(p, 16));
  if (parts.length !== 6 || parts.some((b) => !(b >= 0 && b <= 255))) throw new Error(`'${text}' is not a MAC address (expected six hex bytes like 52:54:00:12:34:56)`);
  return parts as unknown as Mac;
}

/** Largest frame without CRC and without a VLAN tag: 1500 bytes of payload + 14 of header. */
export const MAX_FRAME = 1514;
/** Destination, source, EtherType: the shortest frame send() takes. */
export const ETHER_HEADER = 14;
/** Shorter frames are padded to this (64 on the wire with the FCS). */
export const MIN_FRAME = 60;

export interface RxFrame {
  /** The whole receive buffer; the frame is bytes [0, length). Valid until release(), and only while its incarnation runs. */
  readonly bytes: Uint8Array;
  readonly length: number;
  /** Gives the buffer back to the driver. A second call, or one after the driver restarted, does nothing. */
  release(): void;
}

/**
 * A receive buffer's own RxFrame, made once per buffer (no allocation per
 * frame): `held` while the consumer has it; release() gives the buffer
 * back to its driver's receive side once.
 */
export class PooledFrame implements RxFrame {
  length = 0;
  held = false;
  constructor(readonly bytes: Uint8Array, private readonly owner: { recycle(id: number): void }, readonly id: number) {}
  release(): void {
    if (!this.held) return;
    this.held = false;
    this.owner.recycle(this.id);
  }
}

export interface LinkState {
  readonly up: boolean;
  readonly speedMbps: 10 | 100 | 1000 | undefined;
  readonly fullDuplex: boolean;
  /** The PHY's own view (its status register): link and autonegotiation complete. */
  readonly phyLink: boolean;
  readonly autonegComplete: boolean;
}

export const LINK_UNKNOWN: LinkState = { up: false, speedMbps: undefined, fullDuplex: false, phyLink: false, autonegComplete: false };

export interface PortInfo {
  readonly mac: string;
  readonly macSource: string;
  readonly phyId: string;
  /** 'msix', 'msi', 'intx' or 'poll'. */
  readonly interrupt: string;
  readonly incarnation: number;
  readonly rxRing: number;
  readonly txRing: number;
}

/** What one incarnation counts, in shared memory (the consumer reads it live). */
export const DRIVER_COUNTERS = {
  rx: [
    'frames', 'bytes',
    /** Descriptors with an error bit or without end-of-packet: recycled, not delivered. */
    'errors',
    /** Receive overrun interrupts (the ring had no free descriptor). */
    'overruns',
    /** Refills that found every receive buffer held by the consumer (it does not release: the ring runs dry). */
    'noBuffer',
    /** Frames the device had written into the ring when the incarnation ended, never delivered. */
    'lostInRestart',
  ],
  tx: [
    'frames', 'bytes',
    /** Posted frames the device had not fetched when the incarnation ended. */
    'lostInRestart',
  ],
  /** Interrupt events per vector role, and events that found no cause of their vector's kind. */
  vectors: ['rx', 'tx', 'other', 'shared', 'misrouted'],
} as const;

export type DriverCounters = { readonly [G in keyof typeof DRIVER_COUNTERS]: Record<typeof DRIVER_COUNTERS[G][number], number> } & {
  /** The device's statistics registers, accumulated (the binding names them: PacketBinding.hardwareCounters). */
  readonly hardware: Record<string, number>;
};

/** A port's counters over all its incarnations (PacketPort.stats()). */
export interface NetCounters {
  readonly rx: DriverCounters['rx'] & {
    /** Delivered while nobody subscribed to `frames`: released at once. */
    unconsumed: number;
  };
  readonly tx: DriverCounters['tx'] & {
    /** send() calls that could not take every frame (every transmit buffer was in flight). */
    ringFull: number;
    droppedLinkDown: number;
    /** send() while no incarnation was attached (during a restart). */
    droppedNoDevice: number;
  };
  readonly vectors: DriverCounters['vectors'];
  readonly link: { changes: number };
  readonly hardware: Record<string, number>;
}

/** The transmit buffers a consumer fills: `entries` of `stride` bytes in `buffer` (DMA memory the device reads). */
export interface TransmitBuffers {
  readonly buffer: SharedArrayBuffer;
  readonly stride: number;
  readonly entries: number;
}

/** What one incarnation of a NIC driver offers its port (DriverBus.providePacketPort), in the driver's thread. */
export interface PacketBinding {
  readonly info: PortInfo;
  /** Receive buffers the driver has: at most this many frames are out at once. */
  readonly receiveBuffers: number;
  /** The transmit buffers, all the consumer's between transmit() and PacketEndpoint.transmitted(). */
  readonly transmitBuffers: TransmitBuffers;
  /** Posts buffer `index` holding a frame of `length` bytes (already padded); the device is told at flushTransmit(). */
  transmit(index: number, length: number): void;
  /** Tells the device about every frame transmit() posted since the last flush (one tail write per batch). */
  flushTransmit(): void;
  applyFilters(unicast: readonly Mac[], multicast: readonly Mac[]): void;
  /** Names of the hardware counters readStats() accumulates. */
  readonly hardwareCounters: readonly string[];
  /** Adds what the device's statistics registers counted since the last read. */
  readStats(into: Record<string, number>): void;
}

/** What the driver reports to, from DriverBus.providePacketPort. */
export interface PacketEndpoint {
  readonly counters: DriverCounters;
  /** A received frame, by reference: its buffer is the consumer's until it calls release(). */
  deliver(frame: RxFrame): void;
  /** The device is done with transmit buffer `index`. */
  transmitted(index: number): void;
  setLink(link: LinkState): void;
  /** The incarnation stopped: nothing more is delivered or transmitted. */
  unbind(): void;
}

/**
 * A NIC's packet port, as programs use it. It outlives the driver's
 * incarnations: a supervised restart re-binds the new incarnation to the
 * same port, so a consumer keeps one subscription and one set of counters,
 * and the frames lost in between are counted instead of disappearing.
 *
 *   const port = host.packetPort('nic0');
 *   port.frames.subscribe((f) => { use(f.bytes.subarray(0, f.length)); f.release(); });
 *   let sent = port.send(batch);                 // may take fewer: every transmit buffer is in flight
 *   while (sent < batch.length) { await port.writable(); sent += port.send(batch, sent); }
 */
export interface PacketPort {
  readonly name: string;
  /** The attached incarnation (undefined while none is: before attach, during a restart, after stop). */
  readonly attached: PortInfo | undefined;
  readonly info: Observable<PortInfo | undefined>;
  readonly linkState: LinkState;
  /** The link state now, then at each change. */
  readonly link: Observable<LinkState>;
  /** Received frames, each a view of its receive buffer: call release() once done with it. One consumer: the first release() hands the buffer back. */
  readonly frames: Observable<RxFrame>;
  /**
   * Queues frames[from..] for transmission and returns how many it took: all
   * of them, or fewer when every transmit buffer is in flight (await
   * writable(), then send the rest). Frames sent while the link is down or
   * while no incarnation is attached are taken and counted as dropped. A
   * frame shorter than an Ethernet header (ETHER_HEADER) or longer than
   * MAX_FRAME is refused (UpciError OUT_OF_RANGE) before any frame of the
   * batch is queued.
   */
  send(frames: readonly Uint8Array[], from?: number): number;
  /** Resolves when send() would take a frame: at once while a transmit buffer is free, else when buffers come back (or the link or the incarnation changed). */
  writable(): Promise<void>;
  /** Adds a unicast address the NIC accepts besides its own (e.g. a TAP interface's). */
  addUnicast(mac: Mac): void;
  removeUnicast(mac: Mac): void;
  setMulticast(groups: readonly Mac[]): void;
  readonly unicast: readonly Mac[];
  /** The counters of every incarnation so far; the hardware ones as of the driver's last read of its statistics registers (every STATS_MS). */
  stats(): NetCounters;
}
