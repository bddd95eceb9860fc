/**
 * pci_intr(9) for userland: allocate interrupts of a type (INTx, MSI, MSI-X,
 * or the best the device offers, like pci_intr_alloc), and get one RxJS
 * stream per vector, fed by the event loop of the thread that established
 * them (kernel/interrupt-watcher.ts): a driver in its own worker thread is
 * woken by that thread's loop.
 *
 * INTx is level-triggered: the kernel masks the line when it fires (when the
 * port says it is `automasked`), and it stays masked until the driver has
 * quieted the device and calls ack() on the event, so a line that stays
 * asserted cannot storm the host.
 *
 * Lifetime: vectors live from establish() to release() (or the device's
 * close), whoever subscribes or leaves. An interrupt that arrives while a
 * vector has no subscriber, or is masked, is held (counted) and delivered as
 * one event when a subscriber comes or the vector is unmasked: nothing is
 * dropped, and an automasked INTx is never left masked with no one to ack.
 * Establishing does not turn bus mastering on (an MSI is a DMA write, so the
 * driver enables bus mastering once its maps are loaded).
 */
import { defer, map, Observable, startWith, Subject } from 'rxjs';
import { Fanout } from './fanout.js';
import { UpciError } from '../kernel/errors.js';
import type { DeviceFile, IrqKind, IrqSource } from '../kernel/port.js';
import { discardSource, watchSource, type SourceWatch } from '../kernel/interrupt-watcher.js';
import type { PciDevice } from './device.js';

export type InterruptType = IrqKind;

export interface InterruptOptions {
  /** 'best' (default) picks MSI-X, then MSI, then INTx, as pci_intr_alloc does. */
  readonly type?: InterruptType | 'best';
  /** Vectors wanted (MSI/MSI-X); default 1. INTx always has one. */
  readonly vectors?: number;
}

/**
 * One delivery. For MSI and MSI-X the same object is delivered again at the
 * vector's next interrupt (nothing is allocated per interrupt): read it in
 * the handler and keep no reference to it.
 */
export interface InterruptEvent {
  readonly vector: number;
  /** Interrupts the kernel counted since the last event (more than 1: coalesced). */
  readonly count: number;
  /**
   * The driver's answer, like an interrupt handler's return value: call it
   * once the device is quiet. For INTx it unmasks the line; `claimed: false`
   * records a spurious interrupt.
   */
  ack(claimed?: boolean): void;
}

export interface VectorStats {
  readonly delivered: number;
  readonly coalesced: number;
  readonly spurious: number;
  /** INTx: an event is waiting for ack() (the line is masked). */
  readonly awaitingAck: boolean;
}

const PREFERENCE: readonly InterruptType[] = ['msix', 'msi', 'intx'];

/** An InterruptEvent; the one of an MSI/MSI-X vector is reused for its next interrupt. */
class VectorEvent implements InterruptEvent {
  count = 0;
  acked = false;
  readonly vector: number;
  readonly ack: (claimed?: boolean) => void;

  constructor(owner: InterruptVector) {
    this.vector = owner.index;
    this.ack = (claimed = true) => {
      if (this.acked) return;
      this.acked = true;
      owner.acked(claimed);
    };
  }
}

export class InterruptVector {
  /** Not a Subject: its next() allocates, and this runs per interrupt. */
  private readonly fanout = new Fanout<InterruptEvent>();
  /** Interrupts that came while nobody listened or the vector was masked. */
  private held = 0;
  private masked = false;
  private delivered = 0;
  private coalesced = 0;
  private spurious = 0;
  private pendingAck = false;
  /** Nexted on each change of the counts, and only while stats$ has subscribers: the hot path pays nothing otherwise. */
  private readonly statsChanged = new Subject<void>();
  /** Emits each interrupt; see InterruptEvent.ack. */
  readonly events: Observable<InterruptEvent>;
  /** The counts now, then again each time one changes (an interrupt, an ack); completes when the vector is disestablished. */
  readonly stats$: Observable<VectorStats> = defer(() => this.statsChanged.pipe(startWith(undefined), map(() => this.stats())));

  constructor(
    readonly index: number,
    private readonly owner: Interrupts,
  ) {
    this.events = new Observable<InterruptEvent>((subscriber) => {
      // A stream that just completed would hide the mistake (often a firstValueFrom per event).
      if (owner.isReleased) {
        subscriber.error(new UpciError(
          'RELEASED',
          `interrupt vector ${index} was disestablished (release() or the device's close ran)`,
          'establish the interrupts again',
        ));
        return undefined;
      }
      const inner = this.fanout.observable.subscribe(subscriber);
      this.deliverHeld();
      return () => inner.unsubscribe();
    });
  }

  /**
   * Polled mode: interrupts are held (counted, not delivered) until unmask(),
   * which delivers what came meanwhile as one event. The kernel keeps
   * signalling; a driver that wants the device itself quiet also disables
   * the source in the device (an NVMe CQ created without IEN, INTMS).
   */
  mask(): void {
    this.masked = true;
  }

  unmask(): void {
    this.masked = false;
    this.deliverHeld();
  }

  get isMasked(): boolean {
    return this.masked;
  }

  private deliverHeld(): void {
    if (this.held === 0 || this.masked || !this.fanout.observed) return;
    const count = this.held;
    this.held = 0;
    this.fire(count);
  }

  stats(): VectorStats {
    return { delivered: this.delivered, coalesced: this.coalesced, spurious: this.spurious, awaitingAck: this.pendingAck };
  }

  /** Called from the event loop with the interrupts the kernel counted since the last call. */
  fire(count: number): void {
    if (this.masked || !this.fanout.observed) {
      this.held += count;
      return;
    }
    this.delivered++;
    this.coalesced += count - 1;
    const automasked = this.owner.automasked;
    this.pendingAck = automasked;
    this.announceStats();
    // A line the kernel masks waits for its ack: each event is its own object. Otherwise
    // (MSI, MSI-X) one object per vector is reused, so the interrupt path allocates nothing.
    const event = automasked ? new VectorEvent(this) : (this.reused ??= new VectorEvent(this));
    event.count = count;
    event.acked = false;
    this.fanout.emit(event);
  }

  private reused: VectorEvent | undefined;

  /** @internal VectorEvent's ack. */
  acked(claimed: boolean): void {
    if (!claimed) this.spurious++;
    if (this.owner.automasked) {
      this.pendingAck = false;
      this.owner.unmask();
    }
    if (this.owner.automasked || !claimed) this.announceStats();
  }

  private announceStats(): void {
    if (this.statsChanged.observed) this.statsChanged.next();
  }

  complete(): void {
    this.fanout.complete();
    this.statsChanged.complete();
  }
}

/** An established set of vectors; release() (or closing the device) disestablishes it. */
export class Interrupts {
  readonly vectors: readonly InterruptVector[];
  /** The kernel masks the line at each interrupt until unmasked (INTx under VFIO). */
  readonly automasked: boolean;
  private readonly watches: SourceWatch[] = [];
  private released = false;

  private constructor(
    private readonly file: DeviceFile,
    readonly type: InterruptType,
    count: number,
  ) {
    this.automasked = file.irqs[type].automasked;
    this.vectors = Array.from({ length: count }, (_, i) => new InterruptVector(i, this));
    const sources = file.enableIrqs(type, count);
    let next = 0;
    try {
      Interrupts.checkCoverage(file, type, count, sources);
      for (; next < sources.length; next++) {
        this.watches.push(watchSource(sources[next]!, (vector, n) => this.vectors[vector]?.fire(n)));
      }
    } catch (e) {
      try {
        file.disableIrqs(type);
      } finally {
        this.unwatch();
        sources.slice(next).forEach(discardSource);
      }
      throw e;
    }
  }

  /** The port's sources must cover vectors 0..count-1 once each, or some vector would never fire (or fire twice). */
  private static checkCoverage(file: DeviceFile, type: InterruptType, count: number, sources: readonly IrqSource[]): void {
    const covered = new Uint8Array(count);
    for (const s of sources) {
      for (let v = s.firstVector; v < s.firstVector + s.vectors; v++) {
        if (!(v >= 0 && v < count) || covered[v] !== 0) {
          throw new UpciError('KERNEL', `${file.address}: the kernel port's ${type} interrupt sources do not cover vectors 0-${count - 1} once each (vector ${v})`);
        }
        covered[v] = 1;
      }
    }
    const missing = covered.indexOf(0);
    if (missing >= 0) throw new UpciError('KERNEL', `${file.address}: the kernel port gave no interrupt source for ${type} vector ${missing}`);
  }

  /** pci_intr_alloc + pci_intr_establish. */
  static establish(device: PciDevice, options: InterruptOptions = {}): Interrupts {
    const file = device.kernel;
    const wanted = options.vectors ?? 1;
    const type = options.type === undefined || options.type === 'best'
      ? PREFERENCE.find((t) => file.irqs[t].count >= (t === 'intx' ? 1 : wanted))
      : options.type;
    if (type === undefined) {
      throw new UpciError('NO_SUCH_REGION', `${device.address} has no interrupt type with ${wanted} vector(s): INTx ${file.irqs.intx.count}, MSI ${file.irqs.msi.count}, MSI-X ${file.irqs.msix.count}`);
    }
    const offered = file.irqs[type].count;
    const count = type === 'intx' ? 1 : wanted;
    if (offered === 0 || count > offered || !Number.isInteger(count) || count < 1) {
      throw new UpciError(
        offered === 0 || count > offered ? 'NOT_OFFERED' : 'OUT_OF_RANGE',
        `${device.address} offers ${offered} ${type} vector(s); ${count} requested`,
        offered > 0 ? `ask for 1 to ${offered}` : `use another type (${PREFERENCE.filter((t) => file.irqs[t].count > 0).join(', ') || 'none available'})`,
      );
    }
    const interrupts = new Interrupts(file, type, count);
    device.onRelease(() => interrupts.release(), 'interrupts');
    return interrupts;
  }

  vector(index: number): InterruptVector {
    const vector = this.vectors[index];
    if (vector === undefined) throw new UpciError('OUT_OF_RANGE', `vector ${index} is not established (there are ${this.vectors.length})`);
    return vector;
  }

  get isReleased(): boolean {
    return this.released;
  }

  unmask(): void {
    if (!this.released) this.file.unmaskIntx();
  }

  private unwatch(): void {
    for (const watch of this.watches.splice(0)) watch.unwatch();
  }

  /**
   * Disables the vectors in the kernel, then stops watching their sources
   * (the fds handed over with them are closed; a device's own fd stays open
   * until the device closes). Idempotent.
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    try {
      this.file.disableIrqs(this.type);
    } finally {
      this.unwatch();
      for (const vector of this.vectors) vector.complete();
    }
  }
}
