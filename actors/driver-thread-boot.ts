/**
 * A driver thread's entry: lowers the thread's own scheduling priority while
 * it loads its modules (a fresh isolate compiles xstate, rxjs and upci: tens
 * of seconds of CPU in the TCG guest), so that a restart does not starve the
 * drivers that are running; back to normal once loaded. On Linux nice is per
 * thread (setpriority on the thread's id, read from /proc/thread-self).
 * Raising the priority again needs CAP_SYS_NICE: without it the thread keeps
 * the lower one, which costs only latency.
 */
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';

const LOADING_NICE = 10;

function threadId(): number | undefined {
  try {
    return Number(readlinkSync('/proc/thread-self').split('/').pop());
  } catch {
    return undefined; // not Linux
  }
}

function nice(tid: number | undefined, value: number): void {
  if (tid === undefined) return;
  try {
    setPriority(tid, value);
  } catch {
    // EPERM (not root) or no per-thread priority: scheduling is only a matter of latency here.
  }
}

const tid = threadId();
nice(tid, LOADING_NICE);
await import('./driver-thread.js');
nice(tid, 0);
