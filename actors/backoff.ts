import type { RestartPolicy } from './config.js';

/** Delay before restart number `attempt` (1-based): initialDelayMs doubling, capped at maxDelayMs. */
export function restartDelay(policy: RestartPolicy, attempt: number): number {
  return Math.min(policy.initialDelayMs * 2 ** Math.max(0, attempt - 1), policy.maxDelayMs);
}
