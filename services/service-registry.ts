/**
 * The main thread's registry of services (services/service.ts): who provides
 * (kind, name) now, and every export made of it, by consumer. Each thread
 * with services is linked to it by a MessagePort (link(): one per driver
 * incarnation in its own thread, plus the main thread's own `local`). When
 * a consumer asks, the registry asks the provider's thread for a new export
 * and relays the setup (and the ports transferred with it) to the consumer;
 * the I/O then goes between those two threads only.
 *
 * A link's end (its driver's device taken back) withdraws what it
 * provided, closing every consumer's proxy of it, and stops the exports it
 * consumed in their providers' threads: no export, ring or port outlives
 * either side.
 */
import { MessageChannel, MessagePort, type TransferListItem } from 'node:worker_threads';
import { serviceKey, ThreadServices, type ToRegistry, type ToThread } from './service.js';

interface Provision {
  readonly link: Link;
  readonly kind: string;
  readonly name: string;
}

interface Want {
  readonly consumer: Link;
  readonly want: number;
  readonly key: string;
  readonly request: Extract<ToRegistry, { type: 'want' }>;
  readonly timer: NodeJS.Timeout;
  /** The export asked of the provider for it, while that is on its way. */
  asked: number | undefined;
}

interface Export {
  readonly provision: Provision;
  readonly consumer: Link;
  /** Until the provider's setup arrives and is granted. */
  want: Want | undefined;
}

/** A thread's end of its link: give `port` to the thread's ThreadServices. */
export interface ServiceLink {
  readonly port: MessagePort;
  /** Withdraws what the thread provides: every consumer's proxy of it is closed with `reason`. */
  withdrawProvided(reason: string): void;
  /** The thread is gone: withdraws what it provided, stops what it consumed, closes the link. */
  close(reason: string): void;
}

const closePorts = (transfer: readonly TransferListItem[]) => {
  for (const item of transfer) if (item instanceof MessagePort) item.close();
};

class Link {
  closed = false;

  constructor(
    readonly label: string,
    readonly port: MessagePort,
    /** The device whose driver the thread runs (its incarnations share it), if any. */
    readonly owner?: string,
  ) {}

  post(m: ToThread, transfer?: readonly TransferListItem[]): void {
    if (!this.closed) this.port.postMessage(m, transfer);
  }
}

export class ServiceRegistry {
  private readonly provisions = new Map<string, Provision>();
  private readonly exports = new Map<number, Export>();
  private readonly wants = new Set<Want>();
  private nextExport = 1;
  /** By service key: the device whose driver provided it last. */
  private readonly owners = new Map<string, string>();
  /** By service key: why it will not be provided again (its device was released), until someone provides it. */
  private readonly retired = new Map<string, string>();
  /** Why nothing will be provided any more (every device released), once so. */
  private ended: string | undefined;
  /** The main thread's own services: the host's programs (DriverHost.blockDevice) and the drivers that run in this thread. */
  readonly local: ThreadServices;

  constructor() {
    const channel = new MessageChannel();
    this.attach('the main thread', channel.port1);
    this.local = new ThreadServices(channel.port2);
    channel.port2.unref();
  }

  /** A link for a thread (`label` names it in messages; `owner`, the device whose driver runs in it). */
  link(label: string, owner?: string): ServiceLink {
    const channel = new MessageChannel();
    const link = this.attach(label, channel.port1, owner);
    return {
      port: channel.port2,
      withdrawProvided: (reason) => this.withdraw((p) => p.link === link, reason),
      close: (reason) => this.close(link, reason),
    };
  }

  /** Exports made and not yet ended, every provider's and consumer's together. */
  get liveExports(): number {
    return this.exports.size;
  }

  /** Names provided now, by kind ('block'). */
  provided(kind: string): string[] {
    return [...this.provisions.values()].filter((p) => p.kind === kind).map((p) => p.name);
  }

  /**
   * The device `owner` was released: what its driver provided will not come back, so whoever waits for it, or asks
   * later, is refused at once with `reason` (not left to a timeout), until something else provides it.
   */
  retire(owner: string, reason: string): void {
    for (const [key, by] of this.owners) if (by === owner && !this.provisions.has(key)) this.retired.set(key, reason);
    for (const want of [...this.wants]) if (want.asked === undefined) this.refuseIfLost(want);
  }

  /** Nothing will be provided any more (every device released): every wait ends now, and every later ask at once. */
  endAll(reason: string): void {
    this.ended = reason;
    for (const want of [...this.wants]) if (want.asked === undefined) this.refuseIfLost(want);
  }

  /** Refuses a want whose service will not come (see retire, endAll); whether it did. */
  private refuseIfLost(want: Want): boolean {
    const why = this.retired.get(want.key) ?? this.ended;
    if (why === undefined) return false;
    this.end(want);
    want.consumer.post({ type: 'refused', want: want.want, message: `${want.request.noun} ${JSON.stringify(want.request.name)}: ${why}`, final: true });
    return true;
  }

  private attach(label: string, port: MessagePort, owner?: string): Link {
    const link = new Link(label, port, owner);
    port.on('message', (m: ToRegistry) => this.onMessage(link, m));
    // A link never keeps the process alive (the thread at its other end does, while it runs); after on('message'), which refs.
    port.unref();
    return link;
  }

  private onMessage(link: Link, m: ToRegistry): void {
    if (link.closed) {
      // A setup from a thread already taken back: nobody will use it.
      if (m.type === 'exported') closePorts(m.transfer);
      return;
    }
    switch (m.type) {
      case 'provide': {
        const provision: Provision = { link, kind: m.kind, name: m.name };
        const key = serviceKey(m.kind, m.name);
        this.provisions.set(key, provision);
        this.retired.delete(key);
        if (link.owner !== undefined) this.owners.set(key, link.owner);
        for (const want of this.wants) if (want.key === serviceKey(m.kind, m.name) && want.asked === undefined) this.ask(want, provision);
        return;
      }
      case 'withdraw': {
        this.withdraw((p) => p.link === link && p.kind === m.kind && p.name === m.name, `${link.label} withdrew ${m.name}`);
        return;
      }
      case 'want': {
        const key = serviceKey(m.kind, m.name);
        const want: Want = { consumer: link, want: m.want, key, request: m, timer: setTimeout(() => this.timedOut(want), m.timeoutMs), asked: undefined };
        // A wait never keeps the process alive by itself (the threads that may provide do, while they run).
        want.timer.unref();
        this.wants.add(want);
        const provision = this.provisions.get(key);
        if (provision !== undefined) this.ask(want, provision);
        else this.refuseIfLost(want);
        return;
      }
      case 'exported': return this.exported(m.export, m.setup, m.transfer);
      case 'release': {
        const made = this.exports.get(m.export);
        if (made?.consumer === link) this.stopExport(m.export, made);
        return;
      }
      case 'export-failed': {
        const ended = this.exports.get(m.export);
        this.exports.delete(m.export);
        const want = ended?.want;
        if (want === undefined) return;
        this.end(want);
        want.consumer.post({ type: 'refused', want: want.want, message: `${want.request.noun} ${want.request.name}: its provider could not export it: ${m.message}` });
        return;
      }
    }
  }

  private ask(want: Want, provision: Provision): void {
    if (provision.link === want.consumer) {
      this.end(want);
      return want.consumer.post({ type: 'own', want: want.want });
    }
    const id = this.nextExport++;
    want.asked = id;
    this.exports.set(id, { provision, consumer: want.consumer, want });
    const { beside } = want.request;
    provision.link.post({ type: 'export', export: id, kind: provision.kind, name: provision.name, ...(beside === undefined ? {} : { beside }) });
  }

  private exported(id: number, setup: unknown, transfer: readonly TransferListItem[]): void {
    const made = this.exports.get(id);
    const want = made?.want;
    if (want === undefined) {
      // Its want ended meanwhile (timed out, the consumer or the provision gone) and its stop is on its way: nobody uses this setup.
      closePorts(transfer);
      return;
    }
    made!.want = undefined;
    this.end(want);
    want.consumer.post({ type: 'granted', want: want.want, export: id, setup, transfer }, transfer);
  }

  private end(want: Want): void {
    clearTimeout(want.timer);
    this.wants.delete(want);
  }

  private timedOut(want: Want): void {
    this.end(want);
    if (want.asked !== undefined) this.stopExport(want.asked, this.exports.get(want.asked));
    const { noun, name, kind, timeoutMs } = want.request;
    want.consumer.post({
      type: 'refused', want: want.want,
      message: `no ${noun} ${JSON.stringify(name)} within ${timeoutMs} ms (provided now: ${this.provided(kind).join(', ') || 'none'})`,
    });
  }

  private stopExport(id: number, made: Export | undefined): void {
    this.exports.delete(id);
    made?.provision.link.post({ type: 'stop-export', export: id });
  }

  /**
   * The provisions `gone` picks are withdrawn: their consumers' proxies
   * close; wants whose export was on its way from them ask the next
   * provider (now, or when one provides).
   */
  private withdraw(gone: (p: Provision) => boolean, reason: string): void {
    for (const [key, provision] of this.provisions) if (gone(provision)) this.provisions.delete(key);
    const orphans: Want[] = [];
    for (const [id, made] of this.exports) {
      if (!gone(made.provision)) continue;
      this.exports.delete(id);
      if (made.want === undefined) {
        made.consumer.post({ type: 'gone', export: id, reason });
      } else {
        made.want.asked = undefined;
        orphans.push(made.want);
      }
    }
    for (const want of orphans) {
      const next = this.provisions.get(want.key);
      if (next !== undefined) this.ask(want, next);
    }
  }

  private close(link: Link, reason: string): void {
    if (link.closed) return;
    this.withdraw((p) => p.link === link, reason);
    link.closed = true;
    for (const want of [...this.wants]) if (want.consumer === link) this.end(want);
    for (const [id, made] of this.exports) if (made.consumer === link) this.stopExport(id, made);
    link.port.close();
  }
}
