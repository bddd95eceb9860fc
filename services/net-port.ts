/**
 * A consumer's packet port of one NIC (DriverHost.packetPort(name)): the
 * PacketPort programs use, which outlives the driver's incarnations. It
 * asks the services for the port (kind 'packet', services/packet-service.ts)
 * and binds what it gets, the driver's own object in the same thread or a
 * proxy over rings in another; when that incarnation's device is taken
 * back it asks again, for the next one. The counters of the incarnations
 * that ended are added up here, with what their rings held (lost in the
 * restart) and what this side counts itself (frames nobody consumed, sends
 * dropped while the link was down or no incarnation was attached).
 */
import { BehaviorSubject, type Observable } from 'rxjs';
import { UpciError } from '../kernel/errors.js';
import { Fanout } from '../pci/fanout.js';
import {
  ETHER_HEADER, LINK_UNKNOWN, MAX_FRAME, MIN_FRAME,
  type LinkState, type Mac, type NetCounters, type PacketPort, type PortInfo, type RxFrame,
} from '../drivers/packet.js';
import type { PacketSink, PacketSource } from './packet-service.js';

/** Receive address entries a NIC has besides its own station address (the 82574's RAL/RAH 1..15). */
const EXTRA_UNICAST = 15;

/** After a refusal (no incarnation within the services' wait, or the port taken), ask again this much later. */
const RETRY_MS = 100;

/** How long one ask for the port's next incarnation waits before it is asked again. */
export const PACKET_WAIT_MS = 5_000;

type Groups = Record<string, Record<string, number>>;

function emptyCounters(): NetCounters {
  return {
    rx: { frames: 0, bytes: 0, errors: 0, overruns: 0, noBuffer: 0, lostInRestart: 0, unconsumed: 0 },
    tx: { frames: 0, bytes: 0, lostInRestart: 0, ringFull: 0, droppedLinkDown: 0, droppedNoDevice: 0 },
    vectors: { rx: 0, tx: 0, other: 0, shared: 0, misrouted: 0 },
    link: { changes: 0 },
    hardware: {},
  };
}

/** Adds every counter of `from` into `into`, group by group. */
function addCounters(into: Groups, from: Groups): void {
  for (const [group, counters] of Object.entries(from)) {
    const target = (into[group] ??= {});
    for (const [name, value] of Object.entries(counters)) target[name] = (target[name] ?? 0) + value;
  }
}

export class NetPort implements PacketPort {
  private proxy: PacketSource | undefined;
  /** Incarnations that ended: their counters and lost frames still count (a driver may write its last ones after the take-back began). */
  private readonly ended: PacketSource[] = [];
  private following = true;
  private linkUp = false;
  /** Not a Subject: its next() allocates, and this runs per frame. */
  private readonly frameFanout = new Fanout<RxFrame>();
  private readonly linkSubject = new BehaviorSubject<LinkState>(LINK_UNKNOWN);
  private readonly infoSubject = new BehaviorSubject<PortInfo | undefined>(undefined);
  private waiters: (() => void)[] = [];
  /** The incarnations that ended, and what this side counted. */
  private readonly counted: NetCounters = emptyCounters();
  private readonly extraUnicast: Mac[] = [];
  private multicast: readonly Mac[] = [];

  readonly frames: Observable<RxFrame> = this.frameFanout.observable;
  readonly link: Observable<LinkState> = this.linkSubject.asObservable();
  readonly info: Observable<PortInfo | undefined> = this.infoSubject.asObservable();

  /** What the bound proxy delivers to (bound once: nothing is allocated per frame). */
  private readonly sink: PacketSink = {
    deliver: (frame) => {
      if (this.frameFanout.observed) {
        this.frameFanout.emit(frame);
      } else {
        this.counted.rx.unconsumed++;
        frame.release();
      }
    },
    setLink: (link) => this.setLink(link),
    wake: () => this.wake(),
    closed: () => this.unbind(),
  };

  /**
   * `consume` asks the services for the port's next incarnation (it may
   * refuse after a while: then it is asked again); `release` gives the
   * port back to them at close().
   */
  constructor(
    readonly name: string,
    private readonly consume: () => Promise<PacketSource>,
    private readonly release: (reason: string) => void = () => {},
  ) {
    this.follow();
  }

  get attached(): PortInfo | undefined {
    return this.infoSubject.value;
  }

  get linkState(): LinkState {
    return this.linkSubject.value;
  }

  get unicast(): readonly Mac[] {
    return this.extraUnicast;
  }

  send(frames: readonly Uint8Array[], from = 0): number {
    for (let i = from; i < frames.length; i++) {
      const n = frames[i]!.length;
      if (n < ETHER_HEADER) {
        throw new UpciError('OUT_OF_RANGE', `${this.name}: frame ${i} of the batch ${n === 0 ? 'is empty' : `is ${n} bytes`}, shorter than an Ethernet header (${ETHER_HEADER} bytes)`, `send at least the ${ETHER_HEADER}-byte header (destination, source, EtherType); frames shorter than ${MIN_FRAME} bytes are padded`);
      }
      if (n > MAX_FRAME) {
        throw new UpciError('OUT_OF_RANGE', `${this.name}: frame ${i} of the batch is ${n} bytes, more than the ${MAX_FRAME} an untagged 1500-byte MTU allows`, `split the payload, or keep frames to ${MAX_FRAME} bytes without the FCS`);
      }
    }
    const proxy = this.proxy;
    if (proxy === undefined) {
      this.counted.tx.droppedNoDevice += frames.length - from;
      return frames.length - from;
    }
    if (!this.linkUp) {
      this.counted.tx.droppedLinkDown += frames.length - from;
      return frames.length - from;
    }
    const posted = proxy.post(frames, from);
    if (posted < frames.length - from) this.counted.tx.ringFull++;
    return posted;
  }

  /**
   * Checks, then waits: the send() that fell short and this call are two
   * steps, and buffers that came back between them (the caller awaited
   * something else first) woke no one, so waiting for the next return would
   * wait forever when nothing more is in flight. Resolves at once when a
   * send() would take a frame now.
   */
  writable(): Promise<void> {
    const proxy = this.proxy;
    if (proxy === undefined || !this.linkUp || proxy.transmitFree > 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  addUnicast(mac: Mac): void {
    if (this.extraUnicast.length >= EXTRA_UNICAST) throw new UpciError('OUT_OF_RANGE', `${this.name}: all ${EXTRA_UNICAST} extra receive address entries are in use`, 'use promiscuous mode');
    this.extraUnicast.push(mac);
    this.proxy?.filters(this.extraUnicast, this.multicast);
  }

  removeUnicast(mac: Mac): void {
    const i = this.extraUnicast.findIndex((m) => m.every((b, k) => b === mac[k]));
    if (i >= 0) this.extraUnicast.splice(i, 1);
    this.proxy?.filters(this.extraUnicast, this.multicast);
  }

  setMulticast(groups: readonly Mac[]): void {
    this.multicast = [...groups];
    this.proxy?.filters(this.extraUnicast, this.multicast);
  }

  stats(): NetCounters {
    const total = structuredClone(this.counted);
    for (const source of this.proxy === undefined ? this.ended : [...this.ended, this.proxy]) {
      addCounters(total as unknown as Groups, source.counters as unknown as Groups);
      const lost = source.lost();
      total.rx.lostInRestart += lost.rx;
      total.tx.lostInRestart += lost.tx;
    }
    return total;
  }

  /** Stops asking for incarnations (the host is shutting down). */
  stop(): void {
    this.following = false;
  }

  /**
   * This consumer is done with the port (a consumer driver released): no
   * more incarnations are asked for, and the bound one is given back to the
   * services (its export stopped), so another consumer may take the port.
   */
  close(reason: string): void {
    this.stop();
    this.release(reason);
    this.unbind();
  }

  private follow(): void {
    if (!this.following) return;
    const again = () => setTimeout(() => this.follow(), RETRY_MS).unref();
    this.consume().then((source) => {
      if (!this.following) return;
      try {
        this.bind(source);
      } catch {
        // Another consumer has it (a packet port has one): try again later.
        again();
      }
    }, again);
  }

  private bind(source: PacketSource): void {
    this.proxy = source;
    source.bind(this.sink, this.extraUnicast, this.multicast);
    this.infoSubject.next(source.info);
    this.wake();
  }

  /** The bound incarnation's device was taken back: its counts stay, and the next incarnation is asked for. */
  private unbind(): void {
    const source = this.proxy;
    if (source === undefined) return;
    this.proxy = undefined;
    this.ended.push(source);
    this.infoSubject.next(undefined);
    this.wake();
    this.follow();
  }

  private setLink(link: LinkState): void {
    const last = this.linkSubject.value;
    this.linkUp = link.up;
    if (last.up === link.up && last.speedMbps === link.speedMbps && last.phyLink === link.phyLink) return;
    if (last !== LINK_UNKNOWN) this.counted.link.changes++;
    this.linkSubject.next(link);
    this.wake();
  }

  private wake(): void {
    if (this.waiters.length === 0) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
