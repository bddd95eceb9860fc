/**
 * A driver's interrupt vectors served: each vector's events go to its
 * handler, a method called on the driver (no closure per interrupt), until
 * stop(). A handler's throw, or a vector's error, goes to `fault` (the
 * driver's fault funnel), never into the event loop. With `ackAfter` every
 * event is acknowledged once its handler returned or threw (virtio-net);
 * without it the handler acknowledges (e1000e: after unmasking its cause,
 * or unclaimed for a shared line).
 */
import type { Subscription } from 'rxjs';
import type { InterruptEvent } from '../../pci/intr.js';
import type { DriverVector } from '../contract.js';

export type VectorHandler<D> = (this: D, e: InterruptEvent) => void;

export class VectorService<D> {
  private readonly subscriptions: Subscription[] = [];
  private stopped = false;

  constructor(private readonly driver: D, private readonly fault: (error: unknown) => void, private readonly ackAfter = false) {}

  /** Serves vector i by handlers[i]; events that came before are delivered now. */
  serve(vectors: readonly DriverVector[], handlers: readonly VectorHandler<D>[]): void {
    vectors.forEach((v, i) => this.subscriptions.push(v.events.subscribe({ next: (e) => this.guard(handlers[i]!, e), error: this.fault })));
  }

  /** No handler runs from now on. */
  stop(): void {
    this.stopped = true;
    for (const s of this.subscriptions) s.unsubscribe();
  }

  private guard(handler: VectorHandler<D>, e: InterruptEvent): void {
    if (this.stopped) return;
    try {
      handler.call(this.driver, e);
    } catch (error) {
      this.fault(error);
    } finally {
      if (this.ackAfter) e.ack();
    }
  }
}

/**
 * One handler for every vector, called with the vector's index, each event
 * acknowledged after it (NVMe, virtio-blk: the queue reaped whatever the
 * cause): a VectorService of one handler per vector, made once. Returns
 * what stops it.
 */
export function serveInterrupts(vectors: readonly DriverVector[], handle: (vector: number) => void, fault: (error: unknown) => void): () => void {
  const service = new VectorService<undefined>(undefined, fault, true);
  service.serve(vectors, vectors.map((v) => () => handle(v.index)));
  return () => service.stop();
}
