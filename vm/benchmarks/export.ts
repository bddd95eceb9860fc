// Export benchmark: what the OS gets of upci's NVMe driver through its exports, against the guest kernel's own nvme
// driver on an identical controller, in one VM run: fio (io_uring, direct=1) on /dev/ublkbN and /dev/nbdN, both
// exports of one namespace declared in `upci run`'s config (the driver in its own thread, as the config runs it),
// and on the kernel's /dev/nvmeXn1.
//
//   npm run bench:export [-- --quick]
//
// CPU per I/O is fio's own (usr + sys) plus, for the exports, the `upci run` process's (all its threads, from
// /proc/PID/stat) over the same job.
//
// Then the TAP export: busybox ping6 -A (the next echo as soon as the reply came) over IPv6 link-local from the
// TAP of upci's e1000e driver to the guest kernel's e1000e link partner (in a network namespace of its own), against
// the same ping through the kernel's own e1000e driver on the same NIC (rebound to e1000e.ko after upci let it go);
// and the rate of 32 MiB over TCP to a sink beside the partner, checked intact, through each.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultDevices, findProjectRoot, guestAddress } from '../bench.js';
import { benchmarkMain } from './harness.js';
import { fio, kernelController, kernelNvme, type FioJob, type FioResult } from './kernel-drivers.js';
import { KernelPeer } from '../net/kernel-peer.js';
import { sendOverTcp, tcpSinkScript } from '../net/tcp-transfer.js';

const upciController = defaultDevices.find((d) => d.model === 'nvme' && d.slot === '0a.0')!;
const UBLK_ID = 7;
const NBD = '/dev/nbd3';
const nics = defaultDevices.filter((d) => d.model === 'e1000e');
const UPCI_NIC = guestAddress(nics.find((d) => d.bind === 'vfio-pci')!);
const PEER_NIC = guestAddress(nics.find((d) => d.bind === 'e1000e')!);
const PINGS = 300;

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

/** `upci run` of `config`; resolves once every line in `opened` was printed. */
async function upciRun(dir: string, config: unknown, opened: readonly RegExp[]): Promise<{ pid: number; stop: () => Promise<void> }> {
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify(config));
  const child = spawn(process.execPath, [join(findProjectRoot(), 'dist', 'bin', 'upci.js'), 'run', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const deadline = Date.now() + 300_000;
  while (!opened.every((line) => line.test(out))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the exports did not open:\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    pid: child.pid!,
    stop: async () => {
      child.kill('SIGINT');
      await exited;
    },
  };
}

/** Waits until `ifname` has a link-local address that is no longer tentative. */
async function linkLocalReady(ifname: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const own = execFileSync('ip', ['-6', '-o', 'addr', 'show', 'dev', ifname, 'scope', 'link'], { encoding: 'utf8' });
    if (/inet6 fe80::/.test(own) && !own.includes('tentative')) return;
    if (Date.now() > deadline) throw new Error(`${ifname} has no usable link-local address: ${own}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** busybox ping6 -A of `target` through `ifname`: the average and the worst round trip (ms), and the replies. */
async function pingRtt(target: string, ifname: string): Promise<{ avgMs: number; maxMs: number; received: number }> {
  const ping = (count: number) => new Promise<string>((resolve) => execFile('busybox', ['ping6', '-A', '-c', String(count), '-W', '30', `${target}%${ifname}`], (_e, out) => resolve(out)));
  // Neighbour discovery first, unmeasured.
  await ping(3);
  const out = await ping(PINGS);
  const rtt = /min\/avg\/max = ([\d.]+)\/([\d.]+)\/([\d.]+) ms/.exec(out);
  const received = Number(/(\d+) packets received/.exec(out)?.[1] ?? 0);
  if (rtt === null) throw new Error(`ping6 through ${ifname} got no reply:\n${out}`);
  return { avgMs: Number(rtt[2]), maxMs: Number(rtt[3]), received };
}

/** Binds `address` to the kernel's own driver `driver` (it was vfio-pci's) and returns its network interface. */
async function bindKernelNic(address: string, driver: string): Promise<string> {
  const dev = `/sys/bus/pci/devices/${address}`;
  if (existsSync(`${dev}/driver`)) writeFileSync(`${dev}/driver/unbind`, address);
  writeFileSync(`${dev}/driver_override`, driver);
  writeFileSync('/sys/bus/pci/drivers_probe', address);
  const deadline = Date.now() + 30_000;
  while (!existsSync(`${dev}/net`) || readdirSync(`${dev}/net`).length === 0) {
    if (Date.now() > deadline) throw new Error(`${address} has no network interface 30 s after binding ${driver}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return readdirSync(`${dev}/net`)[0]!;
}

/** Bytes sent over TCP through each path for its throughput row. */
const TCP_BYTES = 32 * 1024 * 1024;

/** TCP_BYTES to a sink in the link partner's namespace through `ifname`: MB/s, checked intact. */
async function tcpRate(peer: KernelPeer, target: string, ifname: string): Promise<number> {
  const sink = peer.spawn(process.execPath, ...tcpSinkScript());
  try {
    const lines: string[] = [];
    createInterface({ input: sink.stdout! }).on('line', (l) => lines.push(l));
    const waitFor = async (what: string, seen: () => boolean) => {
      const deadline = Date.now() + 60_000;
      while (!seen()) {
        if (Date.now() > deadline) throw new Error(`the TCP sink: ${what} not seen within 60 s`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await waitFor('listening', () => lines.includes('listening'));
    const started = performance.now();
    const sha256 = await sendOverTcp(`${target}%${ifname}`, TCP_BYTES);
    await waitFor('its digest', () => lines.some((l) => l.startsWith('{')));
    const seconds = (performance.now() - started) / 1000;
    const got = JSON.parse(lines.find((l) => l.startsWith('{'))!) as { bytes: number; sha256: string };
    if (got.bytes !== TCP_BYTES || got.sha256 !== sha256) throw new Error(`TCP through ${ifname}: ${got.bytes} bytes arrived, not the ${TCP_BYTES} sent intact`);
    return TCP_BYTES / 1e6 / seconds;
  } finally {
    sink.kill();
  }
}

/** The TAP rows: ping and TCP through upci's TAP export, then through the kernel's e1000e on the same NIC. */
async function tapRows(dir: string): Promise<string[]> {
  const peer = await KernelPeer.open(PEER_NIC);
  try {
    const target = await peer.linkLocal();
    const upci = await upciRun(dir, {
      devices: [{ address: UPCI_NIC, name: 'nic0', driver: 'e1000e' }],
      exports: [{ tap: 'nic0', ifname: 'upci0' }],
    }, [/export tap nic0 at upci0 open/]);
    let tap;
    let tapRate: number;
    try {
      await linkLocalReady('upci0');
      tap = await pingRtt(target, 'upci0');
      tapRate = await tcpRate(peer, target, 'upci0');
    } finally {
      await upci.stop();
    }
    const ifname = await bindKernelNic(UPCI_NIC, 'e1000e');
    execFileSync('ip', ['link', 'set', 'dev', ifname, 'up']);
    await linkLocalReady(ifname);
    const kernel = await pingRtt(target, ifname);
    const kernelRate = await tcpRate(peer, target, ifname);
    return [
      `| ping -6 RTT, avg (max) over ${PINGS} | ${(kernel.avgMs * 1000).toFixed(0)} µs (${(kernel.maxMs * 1000).toFixed(0)}), ${kernel.received} replies | ${(tap.avgMs * 1000).toFixed(0)} µs (${(tap.maxMs * 1000).toFixed(0)}), ${tap.received} replies | ${(tap.avgMs / kernel.avgMs).toFixed(2)}× |`,
      `| TCP, ${TCP_BYTES / 1024 / 1024} MiB to the partner, checked | ${kernelRate.toFixed(2)} MB/s | ${tapRate.toFixed(2)} MB/s | ${(tapRate / kernelRate).toFixed(2)}× |`,
    ];
  } finally {
    peer.close();
  }
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
  const socket = join(dir, 'nvme1n1.sock');
  const nvme = (options: Record<string, unknown>) => ({ address: guestAddress(upciController), name: 'nvme1', driver: 'nvme', options });
  const cell = (m: Measured, k: Measured) => `${m.iops.toFixed(0)} (${(m.iops / k.iops).toFixed(2)}×) p50 ${m.p50Us.toFixed(0)} µs, ${m.totalCpuUsPerIo.toFixed(0)} µs CPU/I/O`;
  const cells = new Map<string, string[]>();
  // First the driver on interrupts, both exports; then polled (its `polled` option), ublk only. Each export's row
  // is measured right after the kernel's, so that the ratio compares one moment's guest.
  const upci = await upciRun(dir, { devices: [nvme({})], exports: [{ ublk: 'nvme1n1', id: UBLK_ID }, { nbd: 'nvme1n1', socket }] },
    [/export ublk nvme1n1 at \S+ open/, /export nbd nvme1n1 at \S+ open/]);
  try {
    execFileSync('nbd-client', ['-N', 'nvme1n1', '-b', '4096', '-u', socket, NBD]);
    try {
      for (const job of JOBS) {
        const k = await measure(kernelDev, job, seconds);
        const u = await measure(`/dev/ublkb${UBLK_ID}`, job, seconds, upci.pid);
        const n = await measure(NBD, job, seconds, upci.pid);
        cells.set(job.name, [`${k.iops.toFixed(0)} p50 ${k.p50Us.toFixed(0)} µs, ${k.cpuUsPerIo.toFixed(0)} µs CPU/I/O`, cell(u, k), cell(n, k)]);
      }
    } finally {
      execFileSync('nbd-client', ['-d', NBD]);
    }
  } finally {
    await upci.stop();
  }
  const polled = await upciRun(dir, { devices: [nvme({ polled: true })], exports: [{ ublk: 'nvme1n1', id: UBLK_ID }] }, [/export ublk nvme1n1 at \S+ open/]);
  try {
    for (const job of JOBS) {
      const k = await measure(kernelDev, job, seconds);
      const u = await measure(`/dev/ublkb${UBLK_ID}`, job, seconds, polled.pid);
      cells.get(job.name)!.push(cell(u, k));
    }
  } finally {
    await polled.stop();
  }
  const rows = JOBS.map((job) => `| ${job.name} | ${cells.get(job.name)!.join(' | ')} |`);
  const tap = await tapRows(dir);
  process.stdout.write([
    `Exports: fio (io_uring, direct=1), ${seconds} s per row after a 1 s ramp; upci's nvme driver (own thread) on ${guestAddress(upciController)} exported from the config as /dev/ublkb${UBLK_ID} (served in the driver's thread) and ${NBD} (its server in a thread of its own, on registered slots), the kernel's nvme on the identical ${guestAddress(kernelController)} (TCG guest)`,
    '',
    '| job | kernel nvme | ublk (× kernel) | NBD (× kernel) | ublk, driver polled (× kernel, measured again) |',
    '|---|---|---|---|---|',
    ...rows,
    '',
    `TAP export: busybox ping6 -A, then TCP (a node sender here, a sink in the partner's namespace), from the TAP of upci's e1000e driver on ${UPCI_NIC} (from the config) to the guest kernel's e1000e on ${PEER_NIC} (its own network namespace), IPv6 link-local; then the same through the kernel's e1000e driver on ${UPCI_NIC}`,
    '',
    '| path | kernel e1000e | upci TAP export | TAP / kernel |',
    '|---|---|---|---|',
    ...tap,
    '',
  ].join('\n'));
  return 0;
}

await benchmarkMain({ name: 'export', reference: undefined, script: 'export.js', cpus: 2 }, (_reference, quick) => guest(quick));
