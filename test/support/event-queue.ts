/** A vector's events as a queue a test awaits one by one: one subscription for the whole test. */
import type { InterruptEvent, InterruptVector } from '../../pci/intr.js';

/** Resolves with each next event of a vector, in order, without losing any that arrive early. */
export function eventQueue(vector: InterruptVector): { next(): Promise<InterruptEvent>; drain(): number; all: InterruptEvent[]; readonly messages: number; stop(): void } {
  const all: InterruptEvent[] = [];
  const waiting: ((e: InterruptEvent) => void)[] = [];
  const early: InterruptEvent[] = [];
  let messages = 0;
  const sub = vector.events.subscribe((e) => {
    all.push(e);
    messages += e.count;
    const w = waiting.shift();
    if (w) w(e);
    else early.push(e);
  });
  return {
    next: () => {
      const e = early.shift();
      return e ? Promise.resolve(e) : new Promise((resolve) => waiting.push(resolve));
    },
    /** Drops the events that arrived and were not taken yet; returns how many. */
    drain: () => early.splice(0).length,
    all,
    /**
     * The interrupts the kernel counted, summed as each event arrived: an MSI or MSI-X vector
     * reuses one event object, so the entries of `all` show only the latest count.
     */
    get messages() {
      return messages;
    },
    stop: () => sub.unsubscribe(),
  };
}
