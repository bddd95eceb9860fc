/**
 * The project's test command: the unit suite on this machine, then the VM
 * suite inside the QEMU bench, each through ava's TAP reporter, and one
 * closing line with the real counts of both.
 */
import { spawn } from 'node:child_process';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { defaultDevices, guestPanic, runInVm, type VmResult } from '../vm/bench.js';
import { countSuite, exclusiveTests, exitCodeOf, type SuiteCounts } from './suite-counts.js';

const AVA = 'node_modules/ava/entrypoints/cli.mjs';
const VM_TIMEOUT_MS = 45 * 60_000;

/** The `.only` calls in a suite's compiled test files (the `*.test.js` below dist/test/<suite>, as ava.config.mjs picks them). */
async function exclusiveIn(suite: 'unit' | 'vm' | 'vm-trace'): Promise<string[]> {
  const dir = join('dist/test', suite);
  const names = (await readdir(dir, { recursive: true })).filter((name) => name.endsWith('.test.js'));
  return exclusiveTests(await Promise.all(names.map(async (name) => ({ path: join(dir, name), text: await readFile(join(dir, name), 'utf8') }))));
}

async function runUnit(): Promise<SuiteCounts> {
  const exclusive = await exclusiveIn('unit');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [AVA, '--tap'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let tap = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      tap += chunk;
      process.stdout.write(chunk);
    });
    child.once('error', reject);
    child.once('close', (exitCode, signal) => resolve(countSuite(tap, { exitCode, signal, exclusive })));
  });
}

/** The guest's view of the trace log: the results share is its /tmp/upci-out. */
const GUEST_TRACE_LOG = '/tmp/upci-out/qemu-trace.log';

/** What the summary says besides the counts: a suite run again after its guest kernel panicked, and why. */
const notes: string[] = [];

/**
 * One boot of a VM suite. If the guest kernel panics in the middle of it (seen once in nine CI runs: a double
 * fault in the slab allocator under a 9p lookup, with EFLAGS holding garbage, on Debian's 6.12 under TCG), the
 * whole suite runs once more on a fresh boot and the summary says so with the panic's trace; a second panic is
 * counted as it is, so a panic the code under test causes every time still fails the run.
 */
async function runVm(suite: 'vm' | 'trace'): Promise<SuiteCounts> {
  const exclusive = await exclusiveIn(suite === 'trace' ? 'vm-trace' : 'vm');
  let result: VmResult;
  for (let attempt = 1; ; attempt++) {
    result = await runInVm({
      devices: defaultDevices,
      command: [process.execPath, AVA, '--tap'],
      timeoutMs: VM_TIMEOUT_MS,
      memoryMiB: 2048,
      cpus: 2,
      monitor: true,
      onConsole: (text) => process.stdout.write(text),
      ...(suite === 'trace'
        ? { env: { UPCI_SUITE: 'trace', UPCI_QEMU_TRACE: GUEST_TRACE_LOG }, qemuTrace: ['memory_region_ops_read', 'memory_region_ops_write'] }
        : {}),
    });
    await rm(result.outDir, { recursive: true, force: true });
    const panic = guestPanic(result);
    if (attempt > 1 || panic === undefined) break;
    const note = `the guest kernel panicked during the first boot (${panic}); the suite ran again from the start on a fresh boot, and these counts are that run's`;
    notes.push(`# ${suite}: note: ${note}`);
    console.log(`\n# ${suite}: ${note.replace('; the suite ran again', ': running the suite again')}`);
  }
  return countSuite(result.output, {
    exitCode: result.exitCode,
    timedOut: result.timedOut,
    exclusive,
    ...(result.guestError === undefined ? {} : { setupError: result.guestError }),
  });
}

const suites: [string, SuiteCounts][] = [];
console.log('# unit suite (this machine)');
suites.push(['unit', await runUnit()]);
for (const [suite, title] of [
  ['vm', 'VM suite (QEMU q35 + intel-iommu, devices bound to vfio-pci)'],
  ['trace', 'VM trace suite (the same, with QEMU tracing MMIO and port I/O accesses)'],
] as const) {
  console.log(`# ${title}`);
  try {
    suites.push([suite, await runVm(suite)]);
  } catch (e) {
    console.error(`${title} could not run: ${(e as Error).message}`);
    suites.push([suite, { passed: 0, failed: 1, skipped: 0, todo: 0, problems: [`could not run: ${(e as Error).message}`] }]);
  }
}

for (const [name, c] of suites) {
  const todo = c.todo > 0 ? ` (${c.todo} of them todo: declared, not written)` : '';
  console.log(`# ${name}: ${c.passed} passed, ${c.failed} failed, ${c.skipped + c.todo} skipped${todo}`);
  for (const problem of c.problems) console.log(`# ${name}: counted as a failure: ${problem}`);
}
for (const note of notes) console.log(note);
const total = suites.reduce(
  (a, [, c]) => ({ passed: a.passed + c.passed, failed: a.failed + c.failed, skipped: a.skipped + c.skipped + c.todo }),
  { passed: 0, failed: 0, skipped: 0 },
);
console.log(`${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
process.exitCode = exitCodeOf(suites.map(([, c]) => c));
