/**
 * The libFuzzer target of kernel/netbsd/sys/dev/pci/pci_user.c's user
 * boundary (kernel/netbsd/harness/fuzz.c, `build.sh fuzz`), built with
 * -fsanitize=fuzzer,address,undefined:
 *  - every input of harness/regressions/ (each a crash the fuzzer found,
 *    fixed) and of the seed corpus harness/corpus/ is replayed once;
 *  - a bounded run of 60 s (`-max_total_time=60`) mutates from those inputs.
 * A stand-in panic (LOCKDEBUG, x86 bus_dma), a sanitizer report or
 * something left behind after an input fails the test, which prints the
 * reproducer's path and the report.
 *
 * Needs clang with the libFuzzer and sanitizer runtimes (Debian:
 * libclang-rt-14-dev, which vm/setup.sh installs); without them the tests
 * are declared skipped, with a warning naming it.
 */
import test from 'ava';
import { execFile, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildHarness, harnessDir } from '../support/netbsd-harness-build.js';

const FUZZ_SECONDS = 60;

const outDir = mkdtempSync(join(tmpdir(), 'upci-netbsd-fuzz-'));
process.on('exit', () => rmSync(outDir, { recursive: true, force: true }));

/** Why clang cannot link a libFuzzer target with the sanitizers, or undefined. */
function fuzzerMissing(): string | undefined {
  writeFileSync(join(outDir, 'probe.c'), '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n');
  if (spawnSync('sh', ['-c', 'command -v clang']).status !== 0) return 'no clang (Debian: apt-get install clang libclang-rt-14-dev, as vm/setup.sh does)';
  const probe = spawnSync('clang', ['-fsanitize=fuzzer,address,undefined', join(outDir, 'probe.c'), '-o', join(outDir, 'probe')], { encoding: 'utf8' });
  if (probe.status === 0) return undefined;
  return `clang cannot link with -fsanitize=fuzzer,address,undefined: ${probe.stderr.trim().split('\n')[0]} (Debian: apt-get install libclang-rt-14-dev, as vm/setup.sh does)`;
}

interface Run {
  code: number | null;
  signal: string | null;
  stderr: string;
}

function runFuzzer(binary: string, args: string[], cwd: string, timeoutMs: number): Promise<Run> {
  return new Promise((resolve) => {
    execFile(binary, args, { cwd, timeout: timeoutMs, maxBuffer: 1 << 26, env: { ...process.env, UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' } }, (error, _stdout, stderr) => {
      const e = error as (Error & { code?: number | string; signal?: string }) | null;
      resolve({ code: e === null ? 0 : typeof e.code === 'number' ? e.code : -1, signal: e?.signal ?? null, stderr: String(stderr) });
    });
  });
}

/**
 * The crash report: the reproducer's path and the sanitizer's report, without libFuzzer's progress lines.
 * Reproducers are copied to kernel/netbsd/harness/work/ (gitignored), which outlives this process.
 */
function report(run: Run, artifacts: string): string {
  const keep = join(harnessDir, 'work');
  mkdirSync(keep, { recursive: true });
  const found = readdirSync(artifacts).filter((f) => /^(crash|leak|timeout|oom|slow-unit)-/.test(f)).map((f) => {
    cpSync(join(artifacts, f), join(keep, f));
    return join(keep, f);
  });
  const lines = run.stderr.split('\n').filter((l) => !/^#\d+\s+(NEW|REDUCE|pulse|INITED|RELOAD)/.test(l));
  return `fuzzer exit ${run.code ?? run.signal}; reproducer(s): ${found.join(', ') || 'none written'}\n` +
    `replay: kernel/netbsd/harness/build.sh fuzz && kernel/netbsd/harness/obj/fuzz <reproducer>; if pci_user.c was wrong, fix it and add the reproducer to kernel/netbsd/harness/regressions/\n${lines.slice(-80).join('\n')}`;
}

const missing = fuzzerMissing();
if (missing !== undefined) {
  console.warn(`netbsd-fuzz: SKIPPED, the libFuzzer runtime is missing: ${missing}`);
  test.skip(`pci_user.c fuzzer: skipped, ${missing}`, () => {});
} else {
  const binary = buildHarness('fuzz', outDir, 'pci_user.c fuzzer builds with -fsanitize=fuzzer,address,undefined');
  if (binary !== undefined) {
    const inputs = ['regressions', 'corpus'].flatMap((d) =>
      readdirSync(join(harnessDir, d)).filter((f) => !f.startsWith('.') && f !== 'README.md').map((f) => join(harnessDir, d, f)));

    test('pci_user.c fuzzer: every regression and seed input replays clean', async (t) => {
      t.timeout(120_000);
      const artifacts = mkdtempSync(join(outDir, 'replay-'));
      const run = await runFuzzer(binary, [`-artifact_prefix=${artifacts}/`, ...inputs], artifacts, 110_000);
      t.log(`${inputs.length} inputs replayed`);
      if (run.code !== 0) t.fail(report(run, artifacts));
      else t.pass();
    });

    test(`pci_user.c fuzzer: ${FUZZ_SECONDS} s run from the corpus and the regression inputs finds no crash`, async (t) => {
      t.timeout((FUZZ_SECONDS + 90) * 1000);
      const work = mkdtempSync(join(outDir, 'run-'));
      const corpus = join(work, 'corpus');
      mkdirSync(corpus);
      for (const f of inputs) cpSync(f, join(corpus, `${f.includes('/regressions/') ? 'r' : 's'}-${f.split('/').pop()}`));
      const run = await runFuzzer(binary, [`-max_total_time=${FUZZ_SECONDS}`, '-timeout=30', '-rss_limit_mb=2048', '-print_final_stats=1', `-artifact_prefix=${work}/`, corpus], work, (FUZZ_SECONDS + 60) * 1000);
      const execs = /stat::number_of_executed_units:\s*(\d+)/.exec(run.stderr)?.[1];
      const rate = /stat::average_exec_per_sec:\s*(\d+)/.exec(run.stderr)?.[1];
      t.log(`${execs ?? '?'} executions, ${rate ?? '?'} exec/s`);
      if (run.code !== 0) t.fail(report(run, work));
      else t.true(Number(execs) > 0, run.stderr.slice(-2000));
    });
  }
}
