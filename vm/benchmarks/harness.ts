/**
 * How every benchmark runs: compile its C reference on the host, boot the
 * bench VM, run the benchmark's own script there with `--guest <binary>`
 * (both sides measured in one run on one machine), print what it printed.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { defaultDevices, findProjectRoot, guestAddress, runInVm } from '../bench.js';

/** The bench's first edu, the device the benchmarks drive. */
export const eduAddress = guestAddress(defaultDevices.find((d) => d.model === 'edu' && d.bus === undefined)!);

export interface BenchmarkOptions {
  readonly name: string;
  /** C source under vm/benchmarks/, built with `cc -O2 -static`; none when the reference is a packaged tool (fio). */
  readonly reference: string | undefined;
  /** This benchmark's compiled script, under dist/vm/benchmarks/. */
  readonly script: string;
  readonly args: readonly string[];
  readonly cpus?: number;
}

export async function runBenchmarkInVm(options: BenchmarkOptions): Promise<number> {
  const root = findProjectRoot();
  // Not /tmp: the guest has a /tmp of its own; /var/tmp is on the host root it shares.
  const dir = await mkdtemp(`/var/tmp/upci-${options.name}-bench-`);
  try {
    const binary = options.reference === undefined ? 'none' : join(dir, options.name);
    if (options.reference !== undefined) {
      execFileSync('cc', ['-O2', '-Wall', '-Werror', '-static', '-pthread', '-o', binary, join(root, 'vm', 'benchmarks', options.reference)], { stdio: 'inherit' });
    }
    const result = await runInVm({
      devices: defaultDevices,
      command: ['node', join(root, 'dist', 'vm', 'benchmarks', options.script), '--guest', binary, ...options.args],
      timeoutMs: 900_000,
      memoryMiB: 2048,
      cpus: options.cpus ?? 1,
    });
    await rm(result.outDir, { recursive: true, force: true });
    process.stdout.write(result.output);
    if (result.guestError) process.stderr.write(`${options.name} bench: guest setup failed: ${result.guestError}\n`);
    if (result.timedOut) process.stderr.write(`${options.name} bench: timed out\n`);
    return result.exitCode ?? 1;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A benchmark script's entry point. With `--guest <reference binary>` it is
 * inside the bench and measures; otherwise it boots the bench to run itself
 * there. `--cpus N` sets the guest's vCPUs; every other argument (`--quick`,
 * a benchmark's own flags) is passed through.
 */
export async function benchmarkMain(
  options: Omit<BenchmarkOptions, 'args'>,
  measure: (referenceBinary: string, quick: boolean) => Promise<number>,
): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const g = args.indexOf('--guest');
  const c = args.indexOf('--cpus');
  process.exitCode = g >= 0
    ? await measure(args[g + 1]!, quick)
    : await runBenchmarkInVm({ ...options, ...(c >= 0 ? { cpus: Number(args[c + 1]) } : {}), args: c >= 0 ? [...args.slice(0, c), ...args.slice(c + 2)] : args });
}

/** Median and 99th percentile of samples, in their unit. */
export function percentiles(samples: number[]): { median: number; p99: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  return { median: sorted[Math.floor(sorted.length / 2)]!, p99: sorted[Math.floor((sorted.length * 99) / 100)]! };
}
