/**
 * Builds one of kernel/netbsd/harness's programs with its build.sh, for the
 * unit tests that run pci_user.c on the harness (netbsd-harness, netbsd-fuzz).
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

export const harnessDir = fileURLToPath(new URL('../../../kernel/netbsd/harness/', import.meta.url));

/**
 * `build.sh [mode] outDir` and the path of the binary it prints. A build
 * failure is a failure of the kernel code (or of the harness), not a skip:
 * it is declared as one failing test, `title`, with the compiler's output,
 * and undefined is returned so that the caller declares nothing else.
 */
export function buildHarness(mode: 'harness' | 'fuzz', outDir: string, title: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const args = [join(harnessDir, 'build.sh'), ...(mode === 'harness' ? [] : [mode]), outDir];
  try {
    return execFileSync('sh', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env }).trim();
  } catch (e) {
    const buildError = String((e as { stderr?: string }).stderr ?? e);
    test(title, (t) => {
      t.fail(buildError);
    });
    return undefined;
  }
}
