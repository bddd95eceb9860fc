/**
 * The guest kernel's own block drivers on the bench's reference devices (the C side of bench:nvme, bench:export
 * and bench:virtio): nvme on the kernel controller, virtio_blk on the reference virtio disk, virtio_net on the reference virtio NIC; and fio on a block device.
 *
 * busybox insmod resolves no dependencies and Debian ships no modules.dep: each module's own .modinfo
 * (`depends=a,b`) says what goes first, as vm/setup.sh reads it for the initramfs; a compressed module
 * (.ko.xz, as Debian's 6.12 ships them) is unpacked into the guest's /tmp first.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { defaultDevices, guestAddress, type VmDevice } from '../bench.js';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export const kernelController = defaultDevices.find((d) => d.model === 'nvme' && d.slot === '0b.0')!;

/** Module files under `dir`, by module name (dashes as underscores, as the kernel names them). */
function moduleFiles(dir: string): Map<string, string> {
  const files = new Map<string, string>();
  for (const rel of readdirSync(dir, { recursive: true }) as string[]) {
    const m = /([^/]+)\.ko(\.xz)?$/.exec(rel);
    if (m !== null) files.set(m[1]!.replaceAll('-', '_'), join(dir, rel));
  }
  return files;
}

/** A module's bytes, unpacked. */
async function moduleBytes(file: string): Promise<Buffer> {
  if (!file.endsWith('.xz')) return readFileSync(file);
  const { stdout } = await run('xz', ['-dc', file], { encoding: 'buffer', maxBuffer: 64 << 20 });
  return stdout;
}

/** Loads `name` and, first, what it depends on; a module already in /sys/module (built in, or loaded) is skipped. */
async function load(name: string, files: Map<string, string>): Promise<void> {
  if (existsSync(`/sys/module/${name}`)) return;
  const file = files.get(name);
  if (file === undefined) throw new Error(`kernel module ${name}: not in the guest kernel's modules, nor built in`);
  const bytes = await moduleBytes(file);
  const depends = /depends=([^\0]*)\0/.exec(bytes.toString('latin1'))?.[1] ?? '';
  for (const dep of depends.split(',').filter((d) => d !== '')) await load(dep.replaceAll('-', '_'), files);
  const unpacked = `/tmp/${name}.ko`;
  writeFileSync(unpacked, bytes);
  await run('busybox', ['insmod', unpacked]);
}

/** Loads the guest kernel's module `name` (and what it depends on) from the kernel package vm/setup.sh extracted. */
export async function loadKernelModule(root: string, name: string): Promise<void> {
  const base = readdirSync(join(root, '.cache', 'vm')).find((d) => d.startsWith('linux-image-'));
  if (base === undefined) throw new Error('no extracted kernel package under .cache/vm: run vm/setup.sh');
  const modules = join(root, '.cache', 'vm', base, 'lib', 'modules');
  const kver = readdirSync(modules)[0]!;
  await load(name, moduleFiles(join(modules, kver, 'kernel')));
}

/** Loads the kernel's nvme driver (the bench binds nothing to the kernel controller) and gives its namespace's node. */
export async function kernelNvme(root: string): Promise<string> {
  await loadKernelModule(root, 'nvme');
  const address = guestAddress(kernelController);
  for (let i = 0; i < 200; i++) {
    const dir = `/sys/bus/pci/devices/${address}/nvme`;
    const name = existsSync(dir) ? readdirSync(dir)[0] : undefined;
    if (name !== undefined && existsSync(`/dev/${name}n1`)) return `/dev/${name}n1`;
    await sleep(50);
  }
  throw new Error(`the kernel's nvme driver did not bring up ${address} within 10 s`);
}

/** Loads the kernel's virtio_blk (virtio_pci holds the bench's reference disk from boot) and gives that disk's node. */
export async function kernelVirtioBlk(root: string, device: VmDevice): Promise<string> {
  await loadKernelModule(root, 'virtio_blk');
  const pci = `/sys/bus/pci/devices/${guestAddress(device)}`;
  for (let i = 0; i < 200; i++) {
    const virtio = existsSync(pci) ? readdirSync(pci).find((d) => /^virtio\d+$/.test(d)) : undefined;
    const block = virtio !== undefined && existsSync(`${pci}/${virtio}/block`) ? readdirSync(`${pci}/${virtio}/block`)[0] : undefined;
    if (block !== undefined && existsSync(`/dev/${block}`)) return `/dev/${block}`;
    await sleep(50);
  }
  throw new Error(`the kernel's virtio_blk did not bring up a disk on ${guestAddress(device)} within 10 s`);
}

/** Loads the kernel's virtio_net (virtio_pci holds the bench's reference NIC from boot) and waits for that NIC's interface. */
export async function kernelVirtioNet(root: string, device: VmDevice): Promise<void> {
  await loadKernelModule(root, 'virtio_net');
  const pci = `/sys/bus/pci/devices/${guestAddress(device)}`;
  for (let i = 0; i < 400; i++) {
    if (readdirSync(pci).some((d) => /^virtio\d+$/.test(d) && existsSync(`${pci}/${d}/net`))) return;
    await sleep(50);
  }
  throw new Error(`the kernel's virtio_net did not bring up an interface on ${guestAddress(device)} within 20 s`);
}

export interface FioJob {
  readonly rw: 'randread' | 'randwrite' | 'read';
  readonly bs: string;
  readonly depth: number;
}

export interface FioResult {
  readonly iops: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly ios: number;
  readonly runtimeS: number;
  /** fio's own CPU (user + system) per I/O. */
  readonly cpuUsPerIo: number;
  readonly note: string;
}

/** One fio job (io_uring, direct=1) on `dev`: `seconds` after a 1 s ramp. */
export async function fio(dev: string, job: FioJob, seconds: number): Promise<FioResult> {
  const { stdout } = await run('fio', [
    `--name=${job.rw}`, `--filename=${dev}`, `--rw=${job.rw}`, `--bs=${job.bs}`, '--direct=1', '--ioengine=io_uring', `--iodepth=${job.depth}`,
    '--ramp_time=1', `--runtime=${seconds}`, '--time_based', '--output-format=json',
  ], { maxBuffer: 16 * 1024 * 1024 });
  const result = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
  const side = job.rw === 'randwrite' ? result.write : result.read;
  const pct = side.clat_ns.percentile as Record<string, number>;
  const ios = side.total_ios as number;
  const runtimeS = side.runtime / 1000;
  return {
    iops: side.iops, p50Us: pct['50.000000']! / 1000, p99Us: pct['99.000000']! / 1000, ios, runtimeS,
    cpuUsPerIo: ((result.usr_cpu + result.sys_cpu) / 100) * runtimeS * 1e6 / ios,
    note: `${ios} I/Os, fio usr ${result.usr_cpu.toFixed(1)} % sys ${result.sys_cpu.toFixed(1)} %`,
  };
}
