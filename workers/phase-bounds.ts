/**
 * The bounds of a driver's attach and clean detach (attachTimeoutMs), and what is said when one overruns:
 * the phase and the bound by its config key, once. Shared by the device actor (main thread), the worker body
 * (a detach in the driver's thread) and DriverThread (a detach whose thread stopped answering).
 */
import type { AnyDriver } from '../drivers/contract.js';

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

export const attachOverran = (driver: string, limit: number) => `${driver}: attach did not finish within ${limit} ms (attachTimeoutMs)`;

/** A clean detach's bound is attachTimeoutMs too. */
export const detachOverran = (limit: number) => `detach did not finish within ${limit} ms (attachTimeoutMs)`;

/** Bounds `work` by `limit` ms: past it, the rejection is `what`, and the caller takes the device back. */
export async function bounded<T>(work: Promise<T>, limit: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let overran = false;
  const overrun = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      overran = true;
      reject(new Error(what));
    }, limit);
  });
  try {
    // Once over the limit, how the work ends is the take-back's doing (a killed thread ends its attach with
    // "exited"): the overrun is what happened, and the only thing said.
    return await Promise.race([work.then((v) => (overran ? overrun : v), (e: unknown) => (overran ? overrun : Promise.reject(e))), overrun]);
  } finally {
    clearTimeout(timer);
  }
}

/** The driver's own detach (DriverModule.detach), bounded; a failing or hanging one is noted and the quiesce follows anyway. */
export async function cleanDetach(driver: AnyDriver, timeoutMs: number, detach: () => unknown, onNote: (m: string) => void): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      Promise.resolve().then(detach),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(detachOverran(timeoutMs))), timeoutMs))),
    ]);
  } catch (e) {
    onNote(`${driver.name}: detach failed: ${message(e)}; quiescing anyway`);
  } finally {
    clearTimeout(timer);
  }
}
