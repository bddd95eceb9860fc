/**
 * How run-all turns one suite's run into counts: ava's TAP summary, checked
 * against how the runner ended. A count is earned only by a complete summary
 * from a run that ended cleanly; anything else is a failure with its reason.
 */

/** The closing block supertap writes: `1..N`, `# tests`, `# pass`, `# skip` (only when > 0), `# fail`. */
export interface TapSummary {
  tests: number;
  pass: number;
  skip: number;
  /** supertap's `# fail`: failed tests, crashes (a file that threw, exited or had no tests) and todos */
  fail: number;
  /** `not ok N - title # TODO` lines: tests declared but not written, counted by supertap under `# fail` */
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
const TODO_RESULT = /^not ok \d+ - .*# TODO$/gm;

/**
 * The last complete summary block in the output, or undefined. Only the last
 * one counts: in the VM the log merges stderr, where a test's own output (a
 * stray `# fail 0`, even a whole earlier block) may appear before it.
 */
export function parseTapSummary(tap: string): TapSummary | undefined {
  const text = tap.replace(/\r\n/g, '\n');
  let last: RegExpExecArray | undefined;
  for (const match of text.matchAll(SUMMARY)) last = match;
  if (!last) return undefined;
  const [, , tests, pass, skip, fail] = last.map(Number) as number[];
  const todo = text.slice(0, last.index).match(TODO_RESULT)?.length ?? 0;
  return { tests: tests!, pass: pass!, skip: Number.isNaN(skip) ? 0 : skip!, fail: fail!, todo };
}

/** One suite's counts; every way the run fell short is one more failure, with its reason. */
export function countSuite(tap: string, end: RunEnd): SuiteCounts {
  const problems: string[] = [];
  const summary = parseTapSummary(tap);
  const counts = summary
    ? { passed: summary.pass, failed: summary.fail - summary.todo, skipped: summary.skip, todo: summary.todo }
    : { passed: 0, failed: 0, skipped: 0, todo: 0 };
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
  return { ...counts, failed: counts.failed + problems.length, problems };
}
