// Export benchmark: what the OS gets of upci's NVMe driver through its exports, against the guest kernel's own nvme
// driver on an identical controller, in one VM run: fio (io_uring, direct=1) on /dev/ublkbN and /dev/nbdN, both
// exports of one namespace declared in `upci run`'s config (the driver in its own thread, as the config runs it),
// and on the kernel's /dev/nvmeXn1.
//
//   npm run bench:export [-- --quick]
//
// CPU per I/O is fio's own (usr + sys) plus, for the exports, the `upci run` process's (all its threads, from
// /proc/PID/stat) over the same job.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultDevices, findProjectRoot, guestAddress } from '../bench.js';
import { benchmarkMain } from './harness.js';
import { fio, kernelController, kernelNvme, type FioJob, type FioResult } from './kernel-nvme.js';

const upciController = defaultDevices.find((d) => d.model === 'nvme' && d.slot === '0a.0')!;
const UBLK_ID = 7;
const NBD = '/dev/nbd3';

const JOBS: readonly (FioJob & { readonly name: string })[] = [
  { name: '4 KiB randread QD1', rw: 'randread', bs: '4k', depth: 1 },
  { name: '4 KiB randread QD32', rw: 'randread', bs: '4k', depth: 32 },
  { name: '4 KiB randwrite QD32', rw: 'randwrite', bs: '4k', depth: 32 },
  { name: '128 KiB read QD8', rw: 'read', bs: '128k', depth: 8 },
];

/** CPU seconds the process has used so far, all threads (utime + stime, in clock ticks of 1/100 s). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** `upci run` with both exports of the namespace; resolves once both are open. */
async function upciRun(dir: string): Promise<{ pid: number; stop: () => Promise<void>; socket: string }> {
  const socket = join(dir, 'nvme1n1.sock');
  const config = join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({
    devices: [{ address: guestAddress(upciController), name: 'nvme1', driver: 'nvme' }],
    exports: [{ ublk: 'nvme1n1', id: UBLK_ID }, { nbd: 'nvme1n1', socket }],
  }));
  const child = spawn(process.execPath, [join(findProjectRoot(), 'dist', 'bin', 'upci.js'), 'run', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const deadline = Date.now() + 300_000;
  while (!(/export ublk nvme1n1 at \S+ open/.test(out) && /export nbd nvme1n1 at \S+ open/.test(out))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the exports did not open:\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    pid: child.pid!,
    socket,
    stop: async () => {
      child.kill('SIGINT');
      await exited;
    },
  };
}

interface Measured extends FioResult {
  /** fio's CPU plus the upci process's, per I/O. */
  readonly totalCpuUsPerIo: number;
}

async function measure(dev: string, job: FioJob, seconds: number, upciPid?: number): Promise<Measured> {
  const before = upciPid === undefined ? 0 : cpuSeconds(upciPid);
  const result = await fio(dev, job, seconds);
  // Ramp included: the process's CPU over the whole job, against the I/Os of its measured part (an upper bound).
  const upciUs = upciPid === undefined ? 0 : ((cpuSeconds(upciPid) - before) * 1e6) / result.ios;
  return { ...result, totalCpuUsPerIo: result.cpuUsPerIo + upciUs };
}

async function guest(quick: boolean): Promise<number> {
  const seconds = quick ? 3 : 10;
  const root = findProjectRoot();
  const kernelDev = await kernelNvme(root);
  const dir = mkdtempSync(join(tmpdir(), 'upci-bench-export-'));
  const upci = await upciRun(dir);
  const rows: string[] = [];
  try {
    execFileSync('nbd-client', ['-N', 'nvme1n1', '-b', '4096', '-u', upci.socket, NBD]);
    try {
      const ublk = `/dev/ublkb${UBLK_ID}`;
      for (const job of JOBS) {
        const k = await measure(kernelDev, job, seconds);
        const u = await measure(ublk, job, seconds, upci.pid);
        const n = await measure(NBD, job, seconds, upci.pid);
        const cell = (m: Measured) => `${m.iops.toFixed(0)} (${(m.iops / k.iops).toFixed(2)}×) p50 ${m.p50Us.toFixed(0)} µs, ${m.totalCpuUsPerIo.toFixed(0)} µs CPU/I/O`;
        rows.push(`| ${job.name} | ${k.iops.toFixed(0)} p50 ${k.p50Us.toFixed(0)} µs, ${k.cpuUsPerIo.toFixed(0)} µs CPU/I/O | ${cell(u)} | ${cell(n)} |`);
      }
    } finally {
      execFileSync('nbd-client', ['-d', NBD]);
    }
  } finally {
    await upci.stop();
  }
  process.stdout.write([
    `Exports: fio (io_uring, direct=1), ${seconds} s per row after a 1 s ramp; upci's nvme driver (own thread) on ${guestAddress(upciController)} exported from the config as /dev/ublkb${UBLK_ID} and ${NBD}, the kernel's nvme on the identical ${guestAddress(kernelController)} (TCG guest)`,
    '',
    '| job | kernel nvme | ublk (× kernel) | NBD (× kernel) |',
    '|---|---|---|---|',
    ...rows,
    '',
  ].join('\n'));
  return 0;
}

await benchmarkMain({ name: 'export', reference: undefined, script: 'export.js', cpus: 2 }, (_reference, quick) => guest(quick));
