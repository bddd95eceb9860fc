/**
 * A driver's interrupt handler on its vectors: each event handled, then
 * acknowledged whatever the handler did (an event left unacknowledged
 * would hold the vector), and a handler's throw or a vector's error sent
 * to the fault funnel (the driver machine's fault event), never into the
 * event loop. One subscriber per vector, made once: an interrupt
 * allocates nothing here.
 */
import type { DriverVector } from '../contract.js';

/** Runs `handle` with the vector's index on each of its events: returns what unsubscribes from every vector. */
export function serveInterrupts(vectors: readonly DriverVector[], handle: (vector: number) => void, fault: (error: unknown) => void): () => void {
  const subscriptions = vectors.map((v) => v.events.subscribe({
    next: (event) => {
      try {
        handle(v.index);
      } catch (e) {
        fault(e);
      } finally {
        event.ack();
      }
    },
    error: fault,
  }));
  return () => {
    for (const s of subscriptions) s.unsubscribe();
  };
}
