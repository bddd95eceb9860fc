/**
 * Timers owned by the bus (DriverBus.timers()): a driver's timeouts,
 * intervals, immediates and sleeps belong to one incarnation, and the host
 * reclaims them with the rest of what the driver holds when it takes the
 * device back. A timer the driver set can therefore never fire into the
 * next incarnation, nor keep a stopped driver's thread or the host alive.
 */
/** One scheduled callback; cancel() is idempotent and a no-op once it fired or was reclaimed. */
export interface DriverTimer {
  cancel(): void;
}

export interface DriverTimers {
  /** `fn` once after `ms`. */
  timeout(ms: number, fn: () => void): DriverTimer;
  /** `fn` every `ms` until cancelled or reclaimed. */
  interval(ms: number, fn: () => void): DriverTimer;
  /** `fn` once, after this turn's I/O (setImmediate): a polling pass. */
  immediate(fn: () => void): DriverTimer;
  /** Resolves after `ms`; rejects if the host takes the device back first, so a late attach or a wait on the device ends there. */
  sleep(ms: number): Promise<void>;
}

/** One pending timer: what cancel() and release() clear. A class, so a polling pass costs one object besides Node's own. */
class Handle implements DriverTimer {
  id: NodeJS.Timeout | NodeJS.Immediate | undefined;

  constructor(
    private readonly live: Set<Handle>,
    private readonly kind: 'timeout' | 'interval' | 'immediate',
    readonly fn: () => void,
  ) {}

  cancel(): void {
    if (this.live.delete(this)) this.clear();
  }

  clear(): void {
    if (this.kind === 'immediate') clearImmediate(this.id as NodeJS.Immediate);
    else if (this.kind === 'interval') clearInterval(this.id as NodeJS.Timeout);
    else clearTimeout(this.id as NodeJS.Timeout);
  }

  /** A one-shot timer fired: no longer pending, then its callback. Static, with the handle as Node's argument: no closure per timer. */
  static fire(this: void, h: Handle): void {
    h.live.delete(h);
    h.fn();
  }
}

/**
 * The bus's timers of one incarnation. release() cancels every pending
 * timer and rejects every pending sleep; after it, scheduling is refused
 * with the same error as the bus's other calls (`reclaimed`).
 */
export class BusTimers implements DriverTimers {
  private readonly live = new Set<Handle>();
  private readonly sleepers = new Set<(e: Error) => void>();
  private released = false;

  constructor(private readonly reclaimed: () => Error) {}

  /** How many timers are pending (a host's or a test's check that release left none). */
  get pending(): number {
    return this.live.size;
  }

  timeout(ms: number, fn: () => void): DriverTimer {
    const h = this.handle('timeout', fn);
    h.id = setTimeout(Handle.fire, ms, h);
    return h;
  }

  interval(ms: number, fn: () => void): DriverTimer {
    const h = this.handle('interval', fn);
    h.id = setInterval(fn, ms);
    return h;
  }

  immediate(fn: () => void): DriverTimer {
    const h = this.handle('immediate', fn);
    h.id = setImmediate(Handle.fire, h);
    return h;
  }

  sleep(ms: number): Promise<void> {
    if (this.released) return Promise.reject(this.reclaimed());
    return new Promise<void>((resolve, reject) => {
      this.sleepers.add(reject);
      this.timeout(ms, () => {
        this.sleepers.delete(reject);
        resolve();
      });
    });
  }

  /** The host took the device back: nothing set by this incarnation fires again. Idempotent. */
  release(): void {
    this.released = true;
    for (const h of this.live) h.clear();
    this.live.clear();
    const error = this.reclaimed();
    for (const reject of this.sleepers) reject(error);
    this.sleepers.clear();
  }

  private handle(kind: 'timeout' | 'interval' | 'immediate', fn: () => void): Handle {
    if (this.released) throw this.reclaimed();
    const h = new Handle(this.live, kind, fn);
    this.live.add(h);
    return h;
  }
}
