/**
 * The host's packet port of one NIC (DriverHost.packetPort(name)): the
 * PacketPort programs use, which outlives the driver's incarnations. Each
 * incarnation's PacketProxy (actors/packet-service.ts) is bound to it while
 * the incarnation runs; the counters of those that ended are added up here,
 * with what the rings held when they ended (lost in the restart) and what
 * this side counts itself (frames nobody consumed, sends dropped while the
 * link was down or no incarnation was attached).
 */
import { BehaviorSubject, type Observable } from 'rxjs';
import { UpciError } from '../kernel/errors.js';
import { Fanout } from '../pci/fanout.js';
import {
  LINK_UNKNOWN, MAX_FRAME,
  type LinkState, type Mac, type NetCounters, type PacketPort, type PortInfo, type RxFrame,
} from '../drivers/packet.js';
import type { PacketProxy, PacketSink } from './packet-service.js';

/** Receive address entries a NIC has besides its own station address (the 82574's RAL/RAH 1..15). */
const EXTRA_UNICAST = 15;

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
  private proxy: PacketProxy | undefined;
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
  };

  constructor(readonly name: string) {}

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
      if (n === 0) throw new UpciError('OUT_OF_RANGE', `${this.name}: frame ${i} of the batch is empty`, 'send at least an Ethernet header (14 bytes); shorter frames are padded to 60');
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

  writable(): Promise<void> {
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
    if (this.proxy !== undefined) addCounters(total as unknown as Groups, this.proxy.counters as unknown as Groups);
    return total;
  }

  /** @internal The host: a new incarnation provided its port (one at a time). */
  bind(proxy: PacketProxy): void {
    if (this.proxy !== undefined) this.unbind(this.proxy);
    this.proxy = proxy;
    proxy.bind(this.sink, this.extraUnicast, this.multicast);
    this.infoSubject.next(proxy.info);
    this.wake();
  }

  /** @internal The host: `proxy`'s incarnation has ended (its driver thread is gone or its bus reclaimed): its counts are final. */
  unbind(proxy: PacketProxy): void {
    proxy.close();
    if (this.proxy !== proxy) return;
    this.proxy = undefined;
    addCounters(this.counted as unknown as Groups, proxy.counters as unknown as Groups);
    this.counted.rx.lostInRestart += proxy.lost.rx;
    this.counted.tx.lostInRestart += proxy.lost.tx;
    this.infoSubject.next(undefined);
    this.wake();
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
