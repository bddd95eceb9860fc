/**
 * Waiting for an export's provider: its driver's first attach may take long (a driver thread loads in 5-18 s in the
 * TCG guest), so the wait is asked again and again until the host stops, and ends at once only when the provider's
 * device was released for good. Shared by the exports opened in the main thread and the NBD export's own thread.
 */
import { UpciError } from '../kernel/errors.js';

/** One wait for the provider's first incarnation, asked again while the host runs. */
export const FIRST_WAIT_MS = 30_000;

/** `wait`, or undefined once `stopped` resolved. */
export const unlessStopped = <T>(stopped: Promise<void>, wait: Promise<T>): Promise<T | undefined> =>
  Promise.race([wait, stopped.then(() => undefined)]);

/**
 * What `ask` gives once the provider provides (each ask waits up to
 * FIRST_WAIT_MS and is asked again); undefined when `stopped` resolved first.
 * A refusal that is final (the provider's device released) is thrown.
 */
export async function firstProvided<T>(stopped: Promise<void>, ask: (timeoutMs: number) => Promise<T>): Promise<T | undefined> {
  for (;;) {
    const got = await unlessStopped(stopped, ask(FIRST_WAIT_MS).then((value): { value: T | undefined } => ({ value }), (e: unknown) => {
      if (e instanceof UpciError && e.code === 'RELEASED') throw e;
      return { value: undefined };
    }));
    if (got === undefined) return undefined;
    if (got.value !== undefined) return got.value;
  }
}
