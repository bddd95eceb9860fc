/**
 * How long a driver thread has been silent while it could have run: the watchdog's measure of a hang.
 *
 * Silence counts only while the thread could have run. Not while the whole process was not scheduled (a
 * loaded host, a stalled VM: the watchdog's check itself is late; an interval up to one heartbeat period
 * counts in full, the resolution the watchdog promises anyway), and not while the thread sat runnable in the
 * kernel's run queue behind other threads (siblings compiling their modules). A thread that spins is on a CPU
 * and one that blocks is asleep: both count.
 */
export class SilenceMeter {
  private silent = 0;
  private waited = 0;
  // The thread's cumulative run-queue wait at the previous silent check; read only while the thread is silent.
  private lastWait: number | undefined;

  constructor(private readonly heartbeatMs: number) {}

  /** A beat came within the last `intervalMs`, `ageMs` ago by the thread's clock (if it says). */
  beat(intervalMs: number, ageMs: number | undefined): void {
    this.lastWait = undefined;
    this.waited = 0;
    // The silence since is at most the beat's age, and at most the interval it came in.
    this.silent = Math.min(ageMs ?? intervalMs, intervalMs, this.heartbeatMs);
  }

  /** No beat in the last `intervalMs`; `runQueueWaitMs` is the thread's cumulative run-queue wait now, if the kernel says. */
  quiet(intervalMs: number, runQueueWaitMs: number | undefined): void {
    const waited = runQueueWaitMs === undefined || this.lastWait === undefined ? 0 : Math.min(Math.max(0, runQueueWaitMs - this.lastWait), intervalMs);
    this.lastWait = runQueueWaitMs;
    this.waited += waited;
    this.silent += Math.max(0, Math.min(intervalMs - waited, this.heartbeatMs));
  }

  /** Silence counted since the last beat. */
  get silentMs(): number {
    return this.silent;
  }

  /** Of the silence since the last beat, what the thread spent runnable but not on a CPU. */
  get waitedMs(): number {
    return this.waited;
  }
}
