/**
 * How run-all turns one suite's run into counts: ava's TAP summary, checked
 * against how the runner ended. A count is earned only by a complete summary
 * from a run that ended cleanly; anything else is a failure with its reason.
 */

/** The closing block supertap writes: `1..N`, `# tests`, `# pass`, `# skip` (only when > 0), `# fail`. */
export interface TapSummary {
  /** `1..N`: passed, failed, skipped and todo tests (not crashes) */
  plan: number;
  /** `# tests`: passed, failed and skipped tests (not todos, not crashes) */
  tests: number;
  pass: number;
  skip: number;
  /** supertap's `# fail`: failed tests, crashes (a file that threw, exited or had no tests) and todos */
  fail: number;
  /**
   * Tests declared but not written (`not ok N - title # TODO`), counted by
   * supertap under `# fail`: the plan less `# tests` (supertap's finish()
   * counts todos in the plan only), so taken from this summary alone.
   */
  todo: number;
}

/** How the runner ended, as the caller saw it. */
export interface RunEnd {
  /** The process's or the guest command's exit status; null when there was none. */
  exitCode: number | null;
  signal?: string | null;
  timedOut?: boolean;
  /** Why the run could not start the tests at all (e.g. the guest's init gave up). */
  setupError?: string;
  /** `.only` calls in the suite's test files (`file:line`): ava then runs only those of their file, and says nothing of the rest. */
  exclusive?: readonly string[];
}

export interface SuiteCounts {
  passed: number;
  failed: number;
  skipped: number;
  todo: number;
  /** Every reason the suite's counts are not simply its summary's; empty for a clean run. */
  problems: string[];
}

const SUMMARY = /^1\.\.(\d+)\n# tests (\d+)\n# pass (\d+)\n(?:# skip (\d+)\n)?# fail (\d+)$/gm;

/**
 * The last complete summary block in the output, or undefined. Only the last
 * one counts: in the VM the log merges stderr, where a test's own output (a
 * stray `# fail 0`, even a whole earlier block, `# TODO` lines) may appear
 * before it. Its todos come from its own plan line, not from counting TODO
 * lines: a nested block's todo must not cancel one of this block's failures.
 */
export function parseTapSummary(tap: string): TapSummary | undefined {
  const text = tap.replace(/\r\n/g, '\n');
  let last: RegExpExecArray | undefined;
  for (const match of text.matchAll(SUMMARY)) last = match;
  if (!last) return undefined;
  const [, plan, tests, pass, skip, fail] = last.map(Number) as number[];
  return { plan: plan!, tests: tests!, pass: pass!, skip: Number.isNaN(skip) ? 0 : skip!, fail: fail!, todo: plan! - tests! };
}

/** Why a summary cannot be supertap's own (its counts do not add up), or undefined. */
function inconsistency(s: TapSummary): string | undefined {
  if (s.todo >= 0 && s.todo <= s.fail && s.pass + s.skip <= s.tests) return undefined;
  return `its TAP summary does not add up (1..${s.plan}, ${s.tests} tests, ${s.pass} pass, ${s.skip} skip, ${s.fail} fail)`;
}

/** One suite's counts; every way the run fell short is one more failure, with its reason. */
export function countSuite(tap: string, end: RunEnd): SuiteCounts {
  const problems: string[] = [];
  const summary = parseTapSummary(tap);
  // Clamped: a count below zero would cancel another suite's failures in the total.
  const todo = summary ? Math.min(Math.max(summary.todo, 0), summary.fail) : 0;
  const counts = summary
    ? { passed: summary.pass, failed: summary.fail - todo, skipped: summary.skip, todo }
    : { passed: 0, failed: 0, skipped: 0, todo: 0 };
  for (const where of end.exclusive ?? []) problems.push(`.only at ${where}: the rest of its file did not run (remove the .only)`);
  if (end.setupError !== undefined) problems.push(`the tests could not start: ${end.setupError}`);
  if (end.timedOut) problems.push('timed out');
  else if (end.signal) problems.push(`the runner was killed by ${end.signal}`);
  else if (end.exitCode === null) problems.push('the runner ended without an exit status');
  else if (end.exitCode !== 0 && counts.failed === 0) {
    // ava exits 1 when tests failed; a non-zero status with none reported is a crash outside them.
    problems.push(`the runner exited with status ${end.exitCode} but reported no failed test`);
  }
  if (!summary) problems.push('no complete TAP summary (tests, pass, fail) was printed');
  else if (summary.tests === 0) problems.push('no tests ran');
  const odd = summary && inconsistency(summary);
  if (odd) problems.push(odd);
  return { ...counts, failed: counts.failed + problems.length, problems };
}

/** The test command's exit status: non-zero when any suite failed or fell short, whatever the others counted. */
export function exitCodeOf(suites: readonly SuiteCounts[]): number {
  return suites.some((c) => c.failed > 0 || c.problems.length > 0) ? 1 : 0;
}

const EXCLUSIVE = /^[^\S\n]*\w+(?:\.\w+)*\.only\s*\(/gm;

/**
 * Every `.only` call (`test.only(`, `test.serial.only(`, … at the start of a
 * line) in the test files `files` names, as `file:line`. ava runs only those
 * tests of their file and its TAP output does not say so, so the runner
 * looks in the files themselves.
 */
export function exclusiveTests(files: readonly { path: string; text: string }[]): string[] {
  const found: string[] = [];
  for (const { path, text } of files) {
    for (const match of text.matchAll(EXCLUSIVE)) found.push(`${path}:${text.slice(0, match.index).split('\n').length}`);
  }
  return found;
}
