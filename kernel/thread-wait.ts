/**
 * How long a thread of this process has waited to run: runnable, but not on
 * a CPU (the second field of Linux's /proc/<pid>/task/<tid>/schedstat, in ns).
 * The host's watchdog takes it out of a driver thread's silence, so a thread
 * starved by its siblings (other isolates compiling their modules on a busy
 * machine) is not called hung, while one that spins (on a CPU) or blocks
 * (asleep, not runnable) still is. Where the kernel offers no such count (not
 * Linux, no CONFIG_SCHED_INFO) both calls answer undefined and the watchdog
 * counts the silence in full, as before.
 */
import { readFileSync, readlinkSync } from 'node:fs';

/** The calling thread's kernel thread id (its TID, not Node's threadId), or undefined. */
export function currentThreadId(): number | undefined {
  try {
    // "/proc/thread-self" links to "<pid>/task/<tid>".
    const tid = Number(readlinkSync('/proc/thread-self').split('/').at(-1));
    return Number.isInteger(tid) && tid > 0 ? tid : undefined;
  } catch {
    return undefined;
  }
}

/** Milliseconds thread `tid` of this process has spent runnable but not running since it started, or undefined. */
export function runQueueWaitMs(tid: number): number | undefined {
  try {
    const waitNs = Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'ascii').split(' ')[1]);
    return Number.isFinite(waitNs) ? waitNs / 1e6 : undefined;
  } catch {
    return undefined;
  }
}
