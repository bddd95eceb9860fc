/**
 * Teardown that never stops half-way: every step runs even when an earlier
 * one throws (a device left with bus mastering on, or memory left mapped, is
 * worse than a second error), and the failures are thrown together.
 */
export function runEvery(what: string, steps: Iterable<() => void>): void {
  const errors: unknown[] = [];
  for (const step of steps) {
    try {
      step();
    } catch (e) {
      errors.push(e);
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new AggregateError(errors, `${what}: ${errors.length} steps failed`);
}
