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

type Handle = { kind: 'timeout' | 'interval'; id: NodeJS.Timeout } | { kind: 'immediate'; id: NodeJS.Immediate };

function clear(h: Handle): void {
  if (h.kind === 'immediate') clearImmediate(h.id);
  else if (h.kind === 'interval') clearInterval(h.id);
  else clearTimeout(h.id);
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
    return this.live.size + this.sleepers.size;
  }

  timeout(ms: number, fn: () => void): DriverTimer {
    this.refuseIfReleased();
    const h: Handle = { kind: 'timeout', id: setTimeout(() => { this.live.delete(h); fn(); }, ms) };
    return this.track(h);
  }

  interval(ms: number, fn: () => void): DriverTimer {
    this.refuseIfReleased();
    return this.track({ kind: 'interval', id: setInterval(fn, ms) });
  }

  immediate(fn: () => void): DriverTimer {
    this.refuseIfReleased();
    const h: Handle = { kind: 'immediate', id: setImmediate(() => { this.live.delete(h); fn(); }) };
    return this.track(h);
  }

  sleep(ms: number): Promise<void> {
    if (this.released) return Promise.reject(this.reclaimed());
    return new Promise<void>((resolve, reject) => {
      const h: Handle = {
        kind: 'timeout',
        id: setTimeout(() => {
          this.live.delete(h);
          this.sleepers.delete(reject);
          resolve();
        }, ms),
      };
      this.live.add(h);
      this.sleepers.add(reject);
    });
  }

  /** The host took the device back: nothing set by this incarnation fires again. Idempotent. */
  release(): void {
    this.released = true;
    for (const h of this.live) clear(h);
    this.live.clear();
    const error = this.reclaimed();
    for (const reject of this.sleepers) reject(error);
    this.sleepers.clear();
  }

  private track(h: Handle): DriverTimer {
    this.live.add(h);
    return {
      cancel: () => {
        if (this.live.delete(h)) clear(h);
      },
    };
  }

  private refuseIfReleased(): void {
    if (this.released) throw this.reclaimed();
  }
}
