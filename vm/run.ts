// CLI: boot the default bench and run one command in it.
//   node dist/vm/run.js [--timeout S] [--mem MiB] [--cpus N] [--trace PATTERN]... [--keep] -- <command...>
// Exits with the guest command's status, 124 on timeout.
import { rm } from 'node:fs/promises';
import { defaultDevices, runInVm } from './bench.js';

const USAGE =
  'usage: node dist/vm/run.js [--timeout S] [--mem MiB] [--cpus N] [--trace PATTERN]... [--keep] -- <command...>';

function fail(message: string): never {
  process.stderr.write(`vm/run: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function positive(flag: string, value: string | undefined): number {
  const n = Number(value);
  if (!value || !Number.isFinite(n) || n <= 0) fail(`${flag} needs a positive number`);
  return n;
}

const argv = process.argv.slice(2);
const dashes = argv.indexOf('--');
if (dashes < 0 || dashes === argv.length - 1) fail('missing -- <command...>');
const command = argv.slice(dashes + 1);
let timeoutS = 300;
let memoryMiB: number | undefined;
let cpus: number | undefined;
let keep = false;
const qemuTrace: string[] = [];
for (let i = 0; i < dashes; i++) {
  const flag = argv[i]!;
  switch (flag) {
    case '--timeout': timeoutS = positive(flag, argv[++i]); break;
    case '--mem': memoryMiB = positive(flag, argv[++i]); break;
    case '--cpus': cpus = positive(flag, argv[++i]); break;
    case '--trace': qemuTrace.push(argv[++i] ?? fail('--trace needs a pattern')); break;
    case '--keep': keep = true; break;
    default: fail(`unknown option ${flag}`);
  }
}

const abort = new AbortController();
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => abort.abort());

const started = Date.now();
try {
  const result = await runInVm({
    devices: defaultDevices,
    command,
    timeoutMs: timeoutS * 1000,
    memoryMiB,
    cpus,
    qemuTrace,
    monitor: true,
    signal: abort.signal,
    onConsole: (text) => process.stdout.write(text),
  });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  if (result.guestError) process.stderr.write(`vm/run: guest setup failed: ${result.guestError}\n`);
  if (result.qemuTraceLog || keep) process.stderr.write(`vm/run: results kept in ${result.outDir}\n`);
  else await rm(result.outDir, { recursive: true, force: true });
  if (result.timedOut) {
    process.stderr.write(
      abort.signal.aborted ? `vm/run: interrupted after ${seconds}s\n` : `vm/run: timed out after ${timeoutS}s\n`,
    );
    process.exitCode = 124;
  } else if (result.exitCode === null) {
    process.stderr.write(
      `vm/run: QEMU ended without a status from the guest (${seconds}s); QEMU said:\n${result.qemuStderr}`,
    );
    process.exitCode = 125;
  } else {
    process.stderr.write(`vm/run: exit ${result.exitCode} after ${seconds}s\n`);
    process.exitCode = result.exitCode;
  }
} catch (e) {
  process.stderr.write(`${(e as Error).message}\n`);
  process.exitCode = 1;
}
