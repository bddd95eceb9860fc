/**
 * A queue's two ways of learning about completions: interrupts, or polling
 * (NAPI's and SPDK's choice). The poller is the one switch between them: to
 * poll, it masks the queue's vector (its interrupts are held, not lost) and
 * runs polling passes on the bus's timers until the queue is idle; back to
 * interrupts, it stops the passes and unmasks the vector, which delivers
 * what came meanwhile as one event. A queue without a vector only polls. A
 * pass that throws stops the poller and goes to `fault` (DriverBus.fault):
 * the driver's crash, reported once, never a throw into the event loop.
 */
import type { DriverVector } from '../contract.js';
import type { DriverTimer, DriverTimers } from './timers.js';

export type PollMode = 'interrupts' | 'polling';

export interface PollerOptions {
  /** The bus's timers (DriverBus.timers()): the passes end with the incarnation. */
  readonly timers: DriverTimers;
  /** One pass over the queue: reaps what it completed; true while more is outstanding (pass again), false when idle (wait for kick()). */
  readonly pass: () => boolean;
  /** Where a throwing pass's error goes: DriverBus.fault. */
  readonly fault: (error: unknown) => void;
  /** The queue's interrupt vector, masked while polling. None: the queue has no interrupts and is always polled. */
  readonly vector?: DriverVector;
  /** The mode it starts in: 'polling' (the default without a vector) or 'interrupts' (the default with one). */
  readonly mode?: PollMode;
}

export class Poller {
  private current: PollMode;
  private scheduled: DriverTimer | undefined;
  private stopped = false;

  constructor(private readonly options: PollerOptions) {
    this.current = options.vector === undefined ? 'polling' : (options.mode ?? 'interrupts');
    if (this.current === 'polling') options.vector?.mask();
  }

  get mode(): PollMode {
    return this.current;
  }

  /** To polling: the vector masked (its interrupts held), and a pass run now and on until the queue is idle. */
  poll(): void {
    if (this.stopped || this.current === 'polling') return;
    this.current = 'polling';
    this.options.vector!.mask();
    this.kick();
  }

  /** Back to interrupts: no more passes, the vector unmasked (what it held is delivered now). A queue without a vector cannot. */
  interrupts(): void {
    const { vector } = this.options;
    if (vector === undefined) throw new Error('this queue has no interrupt vector: it can only be polled');
    if (this.stopped || this.current === 'interrupts') return;
    this.current = 'interrupts';
    this.cancel();
    vector.unmask();
  }

  /** Work was submitted: while polling, passes run until the queue is idle again. Nothing in interrupt mode (the interrupt will come). */
  kick(): void {
    if (this.stopped || this.current !== 'polling' || this.scheduled !== undefined) return;
    this.scheduled = this.options.timers.immediate(this.run);
  }

  /** No more passes, whatever the mode (the queue is being torn down). */
  stop(): void {
    this.stopped = true;
    this.cancel();
  }

  private cancel(): void {
    this.scheduled?.cancel();
    this.scheduled = undefined;
  }

  /** One pass, and the next if the queue is still busy; made once, so a steady poll allocates no closure of its own. */
  private readonly run = (): void => {
    this.scheduled = undefined;
    let busy: boolean;
    try {
      busy = this.options.pass();
    } catch (e) {
      this.stop();
      this.options.fault(e);
      return;
    }
    if (busy) this.kick();
  };
}
