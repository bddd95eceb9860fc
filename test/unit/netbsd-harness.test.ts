/**
 * kernel/netbsd/sys/dev/pci/pci_user.c run in Linux userland: the
 * execution harness of kernel/netbsd/harness (stand-ins of the NetBSD
 * kernel interfaces it uses, a fake PCI bus) is built here with the host's
 * C compiler and AddressSanitizer + UndefinedBehaviorSanitizer, and each of
 * its ATF-style cases is one test below, run in its own process. A kernel
 * panic of a stand-in (x86's bus_dmamap_sync on PRE|POST, a LOCKDEBUG
 * assertion, ...) or a sanitizer report fails its case.
 *
 * The table test compares the TypeScript port's refusals (pciuser-limits.ts)
 * with the kernel's answers to the same DMA sync and allocation requests.
 *
 * Needs clang (or cc) with the sanitizer runtimes (Debian: clang and
 * libclang-rt-14-dev, which vm/setup.sh installs). Without them the cases
 * are declared skipped, with a warning naming what is missing.
 */
import test from 'ava';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { UpciError } from '../../kernel/errors.js';
import { dmaRequest, syncRequest } from '../../kernel/netbsd/pciuser-limits.js';
import { buildHarness } from '../support/netbsd-harness-build.js';

const run = promisify(execFile);
const SANITIZE = ['-fsanitize=address,undefined', '-pthread'];

/** The first of clang and cc that links a program with the sanitizers, or why none does. */
function sanitizerCompiler(dir: string): { cc?: string; missing?: string } {
  writeFileSync(join(dir, 'probe.c'), 'int main(void) { return 0; }\n');
  const why: string[] = [];
  for (const cc of ['clang', 'cc']) {
    if (spawnSync('sh', ['-c', `command -v ${cc}`]).status !== 0) {
      why.push(`no ${cc}`);
      continue;
    }
    const probe = spawnSync(cc, [...SANITIZE, join(dir, 'probe.c'), '-o', join(dir, 'probe')], { encoding: 'utf8' });
    if (probe.status === 0) return { cc };
    why.push(`${cc} cannot link with ${SANITIZE[0]}: ${probe.stderr.trim().split('\n')[0]}`);
  }
  return { missing: `${why.join('; ')} (Debian: apt-get install clang libclang-rt-14-dev, as vm/setup.sh does)` };
}

const outDir = mkdtempSync(join(tmpdir(), 'upci-netbsd-harness-'));
process.on('exit', () => rmSync(outDir, { recursive: true, force: true }));
const { cc, missing } = sanitizerCompiler(outDir);

if (missing !== undefined) {
  console.warn(`netbsd-harness: SKIPPED, the sanitizer toolchain is missing: ${missing}`);
  test.skip(`pci_user.c harness: skipped, ${missing}`, () => {});
} else {
  const binary = buildHarness('harness', outDir, 'pci_user.c harness builds with -fsanitize=address,undefined', { ...process.env, CC: cc });
  if (binary !== undefined) {
    // "name" or "name xfail": a known gap (DESIGN.md), reported as a known failure.
    const cases = execFileSync(binary, ['-l'], { encoding: 'utf8' }).trim().split('\n').map((l) => l.split(' ') as [string, string?]);
    const env = { ...process.env, ASAN_OPTIONS: 'abort_on_error=0:detect_leaks=1', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' };
    for (const [name, xfail] of cases) {
      (xfail === 'xfail' ? test.failing : test)(`pci_user.c: ${name}${xfail === 'xfail' ? ' (known gap, expected to fail)' : ''}`, async (t) => {
        try {
          await run(binary, [name], { env, timeout: 50_000, maxBuffer: 1 << 24 });
          t.pass();
        } catch (e) {
          const err = e as { code?: number; signal?: string; stderr?: string };
          t.fail(`${name}: ${err.signal ?? `exit ${err.code}`}\n${err.stderr ?? ''}`);
        }
      });
    }

    test('the port refuses exactly the DMA sync and allocation requests the kernel refuses', async (t) => {
      const { stdout } = await run(binary, ['-t'], { env, timeout: 50_000, maxBuffer: 1 << 24 });
      const refused = (f: () => unknown): boolean => {
        try {
          f();
          return false;
        } catch (e) {
          if (!(e instanceof UpciError)) throw e;
          return true;
        }
      };
      let rows = 0;
      for (const line of stdout.split('\n')) {
        const f = line.split(' ');
        if (f[0] === 'sync') {
          const [ops, len, errno] = f.slice(1).map(Number) as [number, number, number];
          t.true(errno === 0 || errno === 22, line);
          t.is(refused(() => syncRequest(ops, 0, len)), errno !== 0, line);
          rows++;
        } else if (f[0] === 'dmamem') {
          const [pages, align, boundary, segs, errno] = f.slice(1).map(Number) as [number, number, number, number, number];
          t.true(errno === 0 || errno === 22, `${line}: the kernel answers 0 or EINVAL, never EFBIG`);
          const constraints = { alignment: BigInt(align), boundary: BigInt(boundary), addressLimit: (1n << 64n) - 1n, maxSegments: segs };
          t.is(refused(() => dmaRequest(pages * 4096, constraints)), errno !== 0, line);
          rows++;
        }
      }
      t.true(rows > 2000, `${rows} rows`);
    });
  }
}
