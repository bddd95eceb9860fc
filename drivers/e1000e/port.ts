/**
 * The packet API of one e1000e, for programs and other actors in the host
 * process. A NetPort outlives the driver's incarnations: a supervised
 * restart re-attaches the new incarnation to the same port, so a consumer
 * keeps one subscription and one set of counters, and the frames lost in
 * between are counted here instead of disappearing.
 *
 *   const port = e1000ePort('0000:00:08.0');
 *   port.frames.subscribe((f) => { use(f.bytes.subarray(0, f.length)); f.release(); });
 *   let sent = port.send(batch);                 // may take fewer: the ring is full
 *   while (sent < batch.length) { await port.writable(); sent += port.send(batch, sent); }
 */
import { BehaviorSubject, type Observable } from 'rxjs';
import { UpciError } from '../../kernel/errors.js';
import { Fanout } from '../../pci/fanout.js';
import type { InterruptType } from '../../pci/intr.js';
import { emptyHardwareCounters, type HardwareCounters, type LinkState, type Mac } from './mac.js';
import { MAX_FRAME } from './registers.js';
import type { RxFrame } from './rx-ring.js';

/** What a live incarnation offers its port. */
export interface PortBinding {
  post(frames: readonly Uint8Array[], from: number): number;
  /** Reads the device's statistics registers into the port's hardware counters. */
  readStats(into: HardwareCounters): void;
  applyFilters(): void;
}

export interface PortInfo {
  readonly mac: string;
  readonly macSource: 'RAL/RAH' | 'EEPROM';
  readonly phyId: string;
  readonly interrupt: InterruptType | 'poll';
  readonly incarnation: number;
  readonly rxRing: number;
  readonly txRing: number;
}

export interface NetCounters {
  readonly rx: {
    frames: number; bytes: number; errors: number;
    /** Delivered while nobody subscribed to `frames`: released at once. */
    unconsumed: number;
    /** Frames the device had written into the ring when an incarnation ended, never delivered. */
    lostInRestart: number;
    /** Receive overrun interrupts (the ring had no free descriptor). */
    overruns: number;
  };
  readonly tx: {
    frames: number; bytes: number; ringFull: number;
    droppedLinkDown: number;
    /** send() while no incarnation was attached (during a restart). */
    droppedNoDevice: number;
    /** Posted frames the device had not fetched when an incarnation ended. */
    lostInRestart: number;
  };
  /** Interrupt events per vector role, and events that found no cause of their vector's kind. */
  readonly vectors: { rx: number; tx: number; other: number; shared: number; misrouted: number };
  readonly link: { changes: number };
  readonly hardware: HardwareCounters;
}

function emptyCounters(): NetCounters {
  return {
    rx: { frames: 0, bytes: 0, errors: 0, unconsumed: 0, lostInRestart: 0, overruns: 0 },
    tx: { frames: 0, bytes: 0, ringFull: 0, droppedLinkDown: 0, droppedNoDevice: 0, lostInRestart: 0 },
    vectors: { rx: 0, tx: 0, other: 0, shared: 0, misrouted: 0 },
    link: { changes: 0 },
    hardware: emptyHardwareCounters(),
  };
}

const LINK_UNKNOWN: LinkState = { up: false, speedMbps: undefined, fullDuplex: false, phyLink: false, autonegComplete: false };

export class NetPort {
  private binding: PortBinding | undefined;
  private linkUp = false;
  /** Not a Subject: its next() allocates, and this runs per frame. */
  private readonly frameFanout = new Fanout<RxFrame>();
  private readonly linkSubject = new BehaviorSubject<LinkState>(LINK_UNKNOWN);
  private readonly infoSubject = new BehaviorSubject<PortInfo | undefined>(undefined);
  private waiters: (() => void)[] = [];
  /** Counters since the port was made (all incarnations). */
  readonly counters: NetCounters = emptyCounters();
  /** Extra unicast addresses (receive address entries 1..15) and multicast groups, re-applied at each attach. */
  readonly unicast: Mac[] = [];
  multicast: readonly Mac[] = [];

  /** Received frames, each a view of its receive buffer: call release() once done with it. One consumer: the first release() hands the buffer back to the device. */
  readonly frames: Observable<RxFrame> = this.frameFanout.observable;
  /** The link state now, then at each change (the device's link-change interrupt, or polling in polled mode). */
  readonly link: Observable<LinkState> = this.linkSubject.asObservable();
  /** The attached incarnation (undefined while none is: before attach, during a restart, after stop). */
  readonly info: Observable<PortInfo | undefined> = this.infoSubject.asObservable();

  constructor(readonly address: string) {}

  get attached(): PortInfo | undefined {
    return this.infoSubject.value;
  }

  get linkState(): LinkState {
    return this.linkSubject.value;
  }

  /**
   * Queues frames[from..] for transmission and returns how many it took: all
   * of them, or fewer when the transmit ring is full (await writable(), then
   * send the rest). Frames sent while the link is down or while no
   * incarnation is attached are taken and counted as dropped. An empty or
   * oversize frame is refused before any frame of the batch is queued.
   */
  send(frames: readonly Uint8Array[], from = 0): number {
    for (let i = from; i < frames.length; i++) {
      const n = frames[i]!.length;
      if (n === 0) throw new UpciError('OUT_OF_RANGE', `e1000e ${this.address}: frame ${i} of the batch is empty`, 'send at least an Ethernet header (14 bytes); shorter frames are padded to 60');
      if (n > MAX_FRAME) {
        throw new UpciError('OUT_OF_RANGE', `e1000e ${this.address}: frame ${i} of the batch is ${n} bytes, more than the ${MAX_FRAME} an untagged 1500-byte MTU allows`, `split the payload, or keep frames to ${MAX_FRAME} bytes without the FCS`);
      }
    }
    const binding = this.binding;
    if (binding === undefined) {
      this.counters.tx.droppedNoDevice += frames.length - from;
      return frames.length - from;
    }
    if (!this.linkUp) {
      this.counters.tx.droppedLinkDown += frames.length - from;
      return frames.length - from;
    }
    return binding.post(frames, from);
  }

  /** Resolves when the transmit ring may have room again (or the link or the incarnation changed). */
  writable(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Adds a unicast address the NIC accepts besides its own (e.g. a TAP interface's). */
  addUnicast(mac: Mac): void {
    if (this.unicast.length >= 15) throw new UpciError('OUT_OF_RANGE', `e1000e ${this.address}: all 15 extra receive address entries are in use`, 'use promiscuous mode');
    this.unicast.push(mac);
    this.binding?.applyFilters();
  }

  removeUnicast(mac: Mac): void {
    const i = this.unicast.findIndex((m) => m.every((b, k) => b === mac[k]));
    if (i >= 0) this.unicast.splice(i, 1);
    this.binding?.applyFilters();
  }

  setMulticast(groups: readonly Mac[]): void {
    this.multicast = [...groups];
    this.binding?.applyFilters();
  }

  /** The counters, with the device's statistics registers read now when an incarnation is attached. */
  stats(): NetCounters {
    this.binding?.readStats(this.counters.hardware);
    return structuredClone(this.counters);
  }

  // --- the driver's side ---

  /** @internal */
  bind(binding: PortBinding, info: PortInfo, link: LinkState): void {
    this.binding = binding;
    this.infoSubject.next(info);
    this.setLink(link);
    this.wake();
  }

  /** @internal */
  unbind(): void {
    this.binding = undefined;
    this.infoSubject.next(undefined);
    this.wake();
  }

  /** @internal */
  deliver(frame: RxFrame): void {
    if (this.frameFanout.observed) {
      this.frameFanout.emit(frame);
    } else {
      this.counters.rx.unconsumed++;
      frame.release();
    }
  }

  /** @internal */
  setLink(link: LinkState): void {
    const last = this.linkSubject.value;
    this.linkUp = link.up;
    if (last.up === link.up && last.speedMbps === link.speedMbps && last.phyLink === link.phyLink) return;
    if (last !== LINK_UNKNOWN) this.counters.link.changes++;
    this.linkSubject.next(link);
    this.wake();
  }

  /** @internal */
  wake(): void {
    if (this.waiters.length === 0) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}

const ports = new Map<string, NetPort>();

/** The packet port of the e1000e at `address` in this process (made on first use, kept across restarts). */
export function e1000ePort(address: string): NetPort {
  let port = ports.get(address);
  if (port === undefined) {
    port = new NetPort(address);
    ports.set(address, port);
  }
  return port;
}
