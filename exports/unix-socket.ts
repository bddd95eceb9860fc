/**
 * A listening unix socket whose file has its permissions from the start, and is removed only if it is still ours.
 *
 * bind() creates the socket file with 0777 & ~umask, and Node has no way to bind under another umask for one call
 * (process.umask() is process-wide, racy with other threads, and refused in workers). So the socket is bound in a
 * fresh directory of its own (mkdtemp: 0700, only the owner can reach what is in it), given its mode there, and then
 * renamed into place: nobody else can connect before it has its final permissions, and the rename replaces a stale
 * socket atomically. Short names: a unix socket path is at most 107 bytes.
 */
import { chmodSync, lstatSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import type { Server } from 'node:net';
import { basename, dirname, join } from 'node:path';
import { UpciError } from '../kernel/errors.js';

/** The socket file a server listens on (its inode: what removeIfOurs checks). */
export interface SocketFile {
  readonly path: string;
  readonly dev: number;
  readonly ino: number;
}

/** Permission bits from a number or a string of octal digits ("0660"); `who` names the socket's user in errors. */
export function socketMode(raw: number | string, who: string): number {
  const mode = typeof raw === 'string' && /^[0-7]{1,4}$/.test(raw) ? Number.parseInt(raw, 8) : raw;
  if (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > 0o777) {
    throw new UpciError('BAD_CONFIG', `${who}: socket mode ${JSON.stringify(raw)} is not permission bits`, 'give mode as a number up to 0o777 or a string of octal digits like "0660" (default 0600: owner only)');
  }
  return mode;
}

/** `server` listening at `path` with `mode`; `who` names the user of the socket in errors ("nbd", "status"). */
export async function listenPrivately(server: Server, path: string, mode: number, who: string): Promise<SocketFile> {
  let existing;
  try {
    existing = lstatSync(path);
  } catch {
    existing = undefined;
  }
  if (existing !== undefined && !existing.isSocket()) {
    throw new UpciError('BUSY', `${who}: ${path} exists and is not a socket`, 'remove it, or give another socket path');
  }
  let dir: string | undefined;
  try {
    dir = mkdtempSync(join(dirname(path), `.${who}`));
    // 0700 exactly: mkdtemp's is narrowed by the umask, and a caller's umask without the owner's x bit would make it untraversable.
    chmodSync(dir, 0o700);
    const bound = join(dir, 's');
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(bound, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(bound, mode);
    renameSync(bound, path);
    const st = lstatSync(path);
    return { path, dev: st.dev, ino: st.ino };
  } catch (e) {
    server.close();
    const code = (e as NodeJS.ErrnoException).code;
    const dir = dirname(path);
    const fix = code === 'ENOENT' ? `${dir} does not exist: create it first (mkdir -p ${dir}), or give a path in an existing directory`
      : code === 'ENOTDIR' ? `${dir} is not a directory: give a path in a directory`
      : code === 'EACCES' || code === 'EPERM' || code === 'EROFS' ? `this user cannot create files in ${dir}: give a directory it can write to, or run as a user who can`
      : `check that ${dir} is writable and that ${basename(path)} plus its directory is under 100 bytes`;
    throw new UpciError('PERMISSION', `${who}: cannot listen on ${path} (${code ?? String(e)})`, fix, { cause: e });
  } finally {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
}

/** Removes the socket file unless something else has taken its path since. */
export function removeIfOurs(file: SocketFile | undefined): void {
  if (file === undefined) return;
  try {
    const st = lstatSync(file.path);
    if (st.dev === file.dev && st.ino === file.ino) rmSync(file.path, { force: true });
  } catch {
    // Already gone.
  }
}
