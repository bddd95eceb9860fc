/**
 * RLIMIT_MEMLOCK and VFIO: type1 pins every page a process maps for DMA and
 * counts it against the process's locked memory (mm->locked_vm, VmLck in
 * /proc/self/status), which may not pass RLIMIT_MEMLOCK unless the process
 * has CAP_IPC_LOCK (root has). Over the limit VFIO_IOMMU_MAP_DMA fails with
 * ENOMEM, which says nothing of the limit: this module reads the limit and
 * the locked amount from /proc and turns such a failure into an error that
 * names both, the amount needed and how to raise the limit.
 */
import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { UpciError } from '../errors.js';

/** What decides whether a process may pin more pages. */
export interface MemlockState {
  /** RLIMIT_MEMLOCK's soft limit in bytes; undefined when unlimited. */
  readonly soft: number | undefined;
  /** The hard limit (how far the process may raise the soft one itself); undefined when unlimited. */
  readonly hard: number | undefined;
  /** Bytes locked now (VmLck): what earlier DMA mappings pinned, and mlock()s. */
  readonly locked: number;
  /** CAP_IPC_LOCK in the effective set: the limit does not apply. */
  readonly ipcLock: boolean;
}

const CAP_IPC_LOCK = 14n;

/** RLIMIT_MEMLOCK from /proc/PID/limits text ("Max locked memory  8388608  8388608  bytes"). */
export function parseMemlockLimit(limits: string): { soft: number | undefined; hard: number | undefined } {
  const match = /^Max locked memory\s+(\S+)\s+(\S+)/m.exec(limits);
  if (match === null) throw new UpciError('KERNEL', 'no "Max locked memory" line in /proc/self/limits');
  const value = (v: string) => (v === 'unlimited' ? undefined : Number(v));
  return { soft: value(match[1]!), hard: value(match[2]!) };
}

/** VmLck (bytes) and CAP_IPC_LOCK from /proc/PID/status text. */
export function parseLockedStatus(status: string): { locked: number; ipcLock: boolean } {
  const locked = /^VmLck:\s+(\d+) kB/m.exec(status);
  const capEff = /^CapEff:\s+([0-9a-f]+)/m.exec(status);
  return {
    locked: locked === null ? 0 : Number(locked[1]) * 1024,
    ipcLock: capEff !== null && ((BigInt(`0x${capEff[1]}`) >> CAP_IPC_LOCK) & 1n) === 1n,
  };
}

/** This process's state (VmLck is the whole process's: every thread shares its mm). */
export function readMemlock(): MemlockState {
  return { ...parseMemlockLimit(readFileSync('/proc/self/limits', 'utf8')), ...parseLockedStatus(readFileSync('/proc/self/status', 'utf8')) };
}

const MiB = 1 << 20;

/** Bytes as people read them, and exact (limits are set in whole KiB). */
export function formatBytes(n: number): string {
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} bytes`;
}

/** The name of the user this process runs as; its uid where the user database has none (`--user` takes either). */
export function currentUser(): string {
  try {
    return userInfo().username;
  } catch {
    return String(process.getuid?.() ?? '?');
  }
}

/**
 * The error a refused DMA map of `size` bytes gets when RLIMIT_MEMLOCK
 * explains it (the process lacks CAP_IPC_LOCK and locked + size passes the
 * soft limit), or undefined when it does not (the caller keeps the kernel's
 * error). The suggested limit is what is locked plus this mapping, rounded
 * up to whole MiB: at least that; a config whose drivers map more needs more.
 */
export function memlockError(operation: string, size: number, state: MemlockState, user = currentUser(), pid = process.pid): UpciError | undefined {
  if (state.ipcLock || state.soft === undefined || state.locked + size <= state.soft) return undefined;
  const needed = state.locked + size;
  const suggestMiB = Math.ceil(needed / MiB);
  const hard = state.hard === undefined ? 'unlimited' : formatBytes(state.hard);
  return new UpciError(
    'MEMLOCK',
    `${operation} refused: RLIMIT_MEMLOCK is ${formatBytes(state.soft)} (hard ${hard}) and this process has ${formatBytes(state.locked)} locked already; `
      + `pinning ${formatBytes(size)} more needs at least ${formatBytes(needed)} (VFIO pins every page mapped for DMA; root is exempt through CAP_IPC_LOCK)`,
    `raise RLIMIT_MEMLOCK for ${user} to at least ${suggestMiB} MiB (more if the drivers map more): `
      + `\`ulimit -l ${suggestMiB * 1024}\` in the shell that starts upci (up to the hard limit), `
      + `\`sudo prlimit --pid ${pid} --memlock=${suggestMiB * MiB}:${suggestMiB * MiB}\` for this process, `
      + `\`${user} - memlock ${suggestMiB * 1024}\` in /etc/security/limits.conf for logins, `
      + `or \`LimitMEMLOCK=${suggestMiB}M\` in its systemd unit`,
  );
}
