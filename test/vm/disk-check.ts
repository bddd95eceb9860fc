/**
 * What the export tests (NBD, ublk) share: running the OS's disk tools
 * without blocking this process's event loop (it serves the device they use),
 * and checking files where the file system put them in QEMU's backing image.
 */
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { join } from 'node:path';

/** Runs a program to completion without blocking this process's event loop (it serves the disk the program uses). */
export function sh(t: { log(...v: unknown[]): void }, command: string, args: readonly string[], timeoutMs = 120_000, log = true): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')} did not finish within ${timeoutMs} ms:\n${out}`));
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (log || code !== 0) t.log(`$ ${command} ${args.join(' ')} -> ${code ?? signal}${out.trim() ? `\n${out.trim()}` : ''}`);
      if (code === 0) resolve(out);
      else reject(new Error(`${command} ${args.join(' ')} exited with ${code ?? signal}:\n${out}`));
    });
  });
}

/**
 * Each file's bytes where the mounted file system put them (filefrag's
 * extents), read from the backing image on the host, not through the export:
 * an export that mapped offsets to the wrong blocks, consistently both ways,
 * reads its files back fine and fails here. Returns what is misplaced.
 */
export async function misplacedInImage(
  t: { log(...v: unknown[]): void },
  imagePath: string,
  mnt: string,
  files: readonly { name: string; data: Uint8Array }[],
): Promise<string[]> {
  const image = await open(imagePath);
  try {
    const misplaced: string[] = [];
    for (const f of files) {
      const extents = [...(await sh(t, 'filefrag', ['-v', '-b512', join(mnt, f.name)], 120_000, false)).matchAll(/^\s*\d+:\s+(\d+)\.\.\s*\d+:\s+(\d+)\.\.\s*\d+:\s+(\d+):/gm)]
        .map((m) => ({ logical: Number(m[1]) * 512, physical: Number(m[2]) * 512, bytes: Number(m[3]) * 512 }));
      const covered = extents.reduce((n, e) => n + e.bytes, 0);
      if (covered < f.data.length) misplaced.push(`${f.name}: extents cover ${covered} of ${f.data.length} bytes`);
      for (const e of extents) {
        const want = f.data.subarray(e.logical, Math.min(e.logical + e.bytes, f.data.length));
        const { buffer } = await image.read({ buffer: Buffer.alloc(want.length), position: e.physical });
        if (!buffer.equals(want)) misplaced.push(`${f.name}: bytes ${e.logical}.. differ at image offset ${e.physical}`);
      }
    }
    return misplaced;
  } finally {
    await image.close();
  }
}
