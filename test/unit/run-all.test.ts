import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { countSuite, exclusiveTests, exitCodeOf, parseTapSummary } from '../suite-counts.js';

const AVA = resolve('node_modules/ava/entrypoints/cli.mjs');

const summary = (tests: number, pass: number, fail: number, skip = 0) =>
  `\n1..${tests}\n# tests ${tests}\n# pass ${pass}\n${skip > 0 ? `# skip ${skip}\n` : ''}# fail ${fail}\n`;

const twoPassing = `TAP version 13\nok 1 - a\nok 2 - b\n${summary(2, 2, 0)}`;

/** Runs this project's ava with `--tap` in a scratch project whose config picks `files` and which holds `tests` (name to text). */
async function avaIn(t: { teardown(fn: () => unknown): void }, files: string, tests: Record<string, string> = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'upci-run-all-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'package.json'), '{"type":"module"}');
  await writeFile(join(dir, 'ava.config.mjs'), `export default { files: [${JSON.stringify(files)}] };`);
  // Test files import ava: this project's.
  await symlink(resolve('node_modules'), join(dir, 'node_modules'));
  for (const [name, text] of Object.entries(tests)) await writeFile(join(dir, name), text);
  return spawnSync(process.execPath, [AVA, '--tap'], { cwd: dir, encoding: 'utf8', timeout: 30_000 });
}

test('a clean run counts exactly its summary', (t) => {
  t.deepEqual(countSuite(twoPassing, { exitCode: 0 }), { passed: 2, failed: 0, skipped: 0, todo: 0, problems: [] });
});

test('ava with no test files (its real output and exit status) is a failure, not a clean pass', async (t) => {
  const run = await avaIn(t, 'none/**/*.test.js');
  t.is(run.error, undefined);
  t.regex(run.stdout, /^# tests 0$/m, 'ava printed its empty summary');
  const counts = countSuite(run.stdout, { exitCode: run.status, signal: run.signal });
  t.is(counts.passed, 0);
  t.is(counts.failed, 2, `${counts.problems.join('; ')}`);
  t.true(counts.problems.includes('no tests ran'));
  t.true(counts.problems.some((p) => p.includes('status 1')));
});

test('a crash after the summary: a guest with no status, a killed runner, a non-zero exit', (t) => {
  for (const end of [{ exitCode: null }, { exitCode: null, signal: 'SIGSEGV' }, { exitCode: 134 }]) {
    const counts = countSuite(twoPassing, end);
    t.is(counts.passed, 2);
    t.is(counts.failed, 1, JSON.stringify(end));
    t.is(counts.problems.length, 1);
  }
  // ava's own exit 1 with failures reported is consistent: no extra failure.
  t.is(countSuite(`not ok 1 - a\n${summary(1, 0, 1)}`, { exitCode: 1 }).failed, 1);
});

test('a stray "# fail 0" or a whole earlier block before the real summary is not the summary', (t) => {
  const tap = `TAP version 13\n# fail 0\n${summary(9, 9, 0)}not ok 1 - a\nok 2 - b\n${summary(2, 1, 1)}`;
  t.deepEqual(parseTapSummary(tap), { plan: 2, tests: 2, pass: 1, skip: 0, fail: 1, todo: 0 });
  t.is(countSuite(tap, { exitCode: 1 }).failed, 1);
  t.is(countSuite(tap, { exitCode: 1 }).passed, 1);
});

test('a truncated summary (no "# fail" line, or only "# tests") counts as a failure', (t) => {
  for (const tap of ['ok 1 - a\n\n1..1\n# tests 1\n# pass 1\n', 'ok 1 - a\n\n1..1\n# tests 1\n', 'ok 1 - a\n']) {
    const counts = countSuite(tap, { exitCode: 0 });
    t.is(parseTapSummary(tap), undefined);
    t.is(counts.passed, 0);
    t.is(counts.failed, 1);
    t.regex(counts.problems[0]!, /no complete TAP summary/);
  }
});

test('a timeout is a failure even after a clean summary', (t) => {
  const counts = countSuite(twoPassing, { exitCode: null, timedOut: true });
  t.is(counts.passed, 2);
  t.is(counts.failed, 1);
  t.deepEqual(counts.problems, ['timed out']);
});

test('a guest that could not start the tests is a failure with its reason', (t) => {
  const counts = countSuite('', { exitCode: null, setupError: 'bind 0000:00:04.0 failed' });
  t.is(counts.passed, 0);
  t.true(counts.problems[0]!.includes('bind 0000:00:04.0 failed'));
  t.true(counts.failed >= 1);
});

test('todos are reported as todos, not as failures; skips as skips (ava 6 real output shape)', (t) => {
  const tap = [
    'TAP version 13', 'ok 1 - skipped # SKIP', 'not ok 2 - later # TODO', 'ok 3 - one', 'not ok 4 - two',
    '  ---', "    message: ''", '  ...', '', '1..4', '# tests 3', '# pass 1', '# skip 1', '# fail 2', '',
  ].join('\n');
  t.deepEqual(countSuite(tap, { exitCode: 1 }), { passed: 1, failed: 1, skipped: 1, todo: 1, problems: [] });
});

test('a nested TAP block\'s todos (a test\'s stderr, merged into the VM log) do not cancel the real block\'s failure, nor hide another suite\'s', (t) => {
  // A test printed a TAP block of its own (two todos, one with its own summary), before and inside ava's block.
  const nested = 'TAP version 13\nnot ok 1 - x # TODO\nnot ok 2 - y # TODO\n';
  const tap = `${nested}${summary(2, 0, 2)}TAP version 13\nok 1 - a\n${nested}not ok 2 - b\n${summary(2, 1, 1)}`;
  t.like(parseTapSummary(tap), { tests: 2, fail: 1, todo: 0 });
  const unit = countSuite(tap, { exitCode: 1 });
  t.deepEqual(unit, { passed: 1, failed: 1, skipped: 0, todo: 0, problems: [] });
  // Counting TODO lines anywhere made this suite -1 failed and the total with another suite's failure 0, exit 0.
  const vm = countSuite(`not ok 1 - c\n${summary(1, 0, 1)}`, { exitCode: 1 });
  t.is(unit.failed + vm.failed, 2);
  t.is(exitCodeOf([unit, vm]), 1);
});

test('a summary that does not add up never counts below zero; it is a failure with its reason', (t) => {
  // More todos in the plan than "# fail" holds, and a plan shorter than "# tests": neither is supertap's.
  for (const tap of [`not ok 1 - a # TODO\nnot ok 2 - b # TODO\n\n1..3\n# tests 1\n# pass 1\n# fail 1\n`, `ok 1 - a\n\n1..1\n# tests 3\n# pass 3\n# fail 0\n`]) {
    const counts = countSuite(tap, { exitCode: 0 });
    t.true(counts.todo >= 0 && counts.failed >= 1, JSON.stringify(counts));
    t.regex(counts.problems.join('; '), /does not add up/);
  }
});

test('the exit status is per suite: any suite with failures or problems makes it non-zero', (t) => {
  const clean = countSuite(twoPassing, { exitCode: 0 });
  t.is(exitCodeOf([clean, clean]), 0);
  t.is(exitCodeOf([clean, countSuite(twoPassing, { exitCode: null, timedOut: true })]), 1);
  t.is(exitCodeOf([{ passed: 0, failed: 0, skipped: 0, todo: 0, problems: ['no tests ran'] }, clean]), 1, 'a problem alone is enough');
});

test('a stray .only keeps the rest of its file from running and ava\'s TAP does not say so: the runner finds it in the files and fails the suite', async (t) => {
  // Written line by line so that no line of this file starts with a .only call (the runner scans the compiled tests, this one too).
  const exclusive = [
    "import test from 'ava';",
    "test('skipped by the .only below', (t) => t.fail());",
    "test.serial.only('the only one', (t) => t.pass());",
  ].join('\n');
  const run = await avaIn(t, '*.test.js', { 'a.test.js': exclusive });
  t.is(run.status, 0, run.stdout + run.stderr);
  t.notRegex(run.stdout, /skipped by/, 'the failing test is not in the TAP at all');
  t.deepEqual(exclusiveTests([{ path: 'a.test.js', text: exclusive }, { path: 'b.test.js', text: "test('fine', (t) => t.pass()); // no test.only( here\n" }]), ['a.test.js:3']);
  const counts = countSuite(run.stdout, { exitCode: run.status, exclusive: ['a.test.js:3'] });
  t.is(counts.passed, 1);
  t.is(counts.failed, 1);
  t.deepEqual(counts.problems, ['.only at a.test.js:3: the rest of its file did not run (remove the .only)']);
  t.is(exitCodeOf([counts]), 1);
});
