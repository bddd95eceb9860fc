/**
 * Bounded waits for tests: every await on something outside the test's
 * control ends, either with the value or with an error that says what never
 * happened (ava's own timeout would only say that the test took too long).
 */

/** The promise's value, or a rejection naming `what` once `ms` have passed. */
export function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} (nothing after ${ms} ms)`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `predicate` every `everyMs` until it holds; throws naming `what` after `ms`. */
export async function until(what: string, predicate: () => boolean, ms: number, everyMs = 5): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Blocks this thread until `predicate` (something another thread writes in
 * shared memory) holds; throws naming `what` after `ms`. Its event loop does
 * not run meanwhile: what other threads put in the rings stays there.
 */
export function blockUntil(what: string, predicate: () => boolean, ms: number): void {
  const deadline = Date.now() + ms;
  const cell = new Int32Array(new SharedArrayBuffer(4));
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    Atomics.wait(cell, 0, 0, 1);
  }
}

/**
 * Asks `probe` (e.g. another thread, for its counts) every `everyMs` until
 * `done` holds of its answer, and returns that answer; throws naming
 * `what` and the last answer after `ms`.
 */
export async function untilAnswer<T>(what: string, probe: () => Promise<T>, done: (answer: T) => boolean, ms: number, everyMs = 20): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const answer = await probe();
    if (done(answer)) return answer;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last answer: ${JSON.stringify(answer)})`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Runs `work`, failing with `what` (and where `progress` had got to) if `progress()` stays the
 * same for `stallMs`: one timer for a long loop of awaits instead of one per await.
 */
export function progressing<T>(stallMs: number, progress: () => number, what: string, work: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    let last = progress();
    timer = setInterval(() => {
      const now = progress();
      if (now === last) reject(new Error(`${what} (stuck at ${now}, no progress for ${stallMs} ms)`));
      last = now;
    }, stallMs);
  });
  return Promise.race([work(), stalled]).finally(() => clearInterval(timer));
}
