/**
 * Ring hand-offs must come from wake-ups, not from the consumer's re-check
 * (shm/ring.ts): a ring whose notify never arrives still moves, one re-check
 * period per hand-off, so only counting the hand-offs the re-check recovered
 * tells a working wake-up from none.
 */
import type { ExecutionContext } from 'ava';
import type { ringWakeUps } from '../../shm/ring.js';

export type WakeUps = ReturnType<typeof ringWakeUps>;

/** A new thread's counts, before any of its rings waited. */
export const NO_WAKE_UPS: WakeUps = { notified: 0, recovered: 0 };

/**
 * How many of `slots` hand-offs the re-check may recover in a correct build:
 * V8's own lost wake-ups (about one in a million slots, shm/ring.ts), with a
 * wide margin. Without wake-ups it is every hand-off a consumer waited for.
 */
export const recoverable = (slots: number) => 2 + Math.floor(slots / 100_000);

/** Asserts that at most recoverable(slots) of a thread's hand-offs between `before` and `after` waited for the re-check. */
export function wokenByNotify(t: ExecutionContext, where: string, before: WakeUps, after: WakeUps, slots: number): void {
  const recovered = after.recovered - before.recovered;
  const notified = after.notified - before.notified;
  t.true(recovered <= recoverable(slots), `${where}: ${recovered} hand-offs of about ${slots} came only from the re-check (their notify was lost); ${notified} from a notify`);
}
