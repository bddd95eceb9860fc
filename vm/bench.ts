// QEMU test bench: boots a q35 guest with an emulated VT-d IOMMU and a fixed set of
// PCI devices, binds some of them to vfio-pci, and runs one command inside a chroot
// of the host's root file system (shared read-only over 9p). See vm/README.md.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MonitorRelay } from './monitor-relay.js';

export interface VmDevice {
  model: string;
  /** slot.function on its bus, e.g. '04.0' */
  slot: string;
  /** Absent: left as the guest kernel probed it; of the initramfs' drivers only virtio_pci claims
   *  devices by itself (virtio ones), the others bind only through driver_override. */
  bind?: 'vfio-pci' | 'none' | 'pci-stub' | 'uio_pci_generic' | 'e1000e';
  /** id of a bridge from VmOptions.bridges to put the device behind */
  bus?: string;
  /** extra QEMU device properties, starting with a comma: ',k=v' */
  props?: string;
  /** NICs: the QEMU hub the NIC's port is on. NICs on one hub see each other's frames; no
   *  hub has a user-mode or host backend, so no frame leaves the VM. The port's netdev id,
   *  the name QEMU's `set_link` takes, is hubPort(device). */
  hub?: number;
  /** NVMe namespaces (model 'nvme'): each a sparse raw image `<id>.img` the bench creates in
   *  the run's out dir (the guest sees it as $UPCI_VM_OUT/<id>.img), attached as nvme-ns nsid 1, 2... */
  namespaces?: VmNamespace[];
  /** A disk's backing image (model 'virtio-blk-pci'): a sparse raw image `<id>.img` in the run's
   *  out dir like a namespace's, the device's `drive=` (its `props` are unused). */
  drive?: VmNamespace;
  /** A QEMU device id, for devices a test unplugs and plugs again (`device_del ID`, then
   *  `device_add` of the device's `qdev` line from devices.json; vm/monitor.ts). Behind a
   *  pcie-root-port. Its namespace (one at most) is a -blockdev node on the controller itself
   *  (drive=), which QEMU keeps across the unplug, where a -drive would go with the device. */
  hotplugId?: string;
}

/** A bridge on the root bus: a conventional PCI-PCI bridge, or a PCIe root port whose slot is hot-plug capable. */
export interface VmBridge {
  id: string;
  slot: string;
  /** default 'pci-bridge' */
  kind?: 'pci-bridge' | 'pcie-root-port';
}

export interface VmNamespace {
  /** QEMU drive id and image file name; unique in the run. */
  id: string;
  sizeMiB: number;
  /** extra nvme-ns properties, e.g. ',logical_block_size=4096' */
  props?: string;
}

export interface VmOptions {
  devices: VmDevice[];
  /** Bridges on the root bus, slot as in VmDevice. Defaults to the
   *  entries of defaultBridges that the devices refer to. */
  bridges?: VmBridge[];
  command: string[];
  env?: Record<string, string>;
  timeoutMs: number;
  /** default 1024 */
  memoryMiB?: number;
  /** default 1: under TCG on a 2-core host a second vCPU made boot + node startup ~40% slower */
  cpus?: number;
  /** QEMU -trace event patterns; the log goes to qemu-trace.log in outDir. */
  qemuTrace?: string[];
  /** Receives the serial console as it arrives (the job's output is tee'd there). */
  onConsole?: (text: string) => void;
  /** Aborting kills QEMU; runInVm then resolves like a timeout. */
  signal?: AbortSignal;
  /** Lets the guest send commands to QEMU's human monitor (vm/monitor.ts; e.g. set_link). */
  monitor?: boolean;
}

export interface VmResult {
  /** null: timed out, aborted, or the guest never reported a status */
  exitCode: number | null;
  timedOut: boolean;
  /** The job's stdout and stderr (interleaved), without kernel or init messages. */
  output: string;
  dmesg: string;
  console: string;
  /** Host directory shared with the guest as /tmp/upci-out; the caller removes it. */
  outDir: string;
  /** Path of the QEMU trace log when qemuTrace was given. */
  qemuTraceLog?: string;
  /** Why the guest's init gave up before running the job (e.g. a bind failed). */
  guestError?: string;
  /** QEMU's own stderr: warnings, and who signalled it if something else killed it. */
  qemuStderr: string;
}

/** A bridge on the root bus: a conventional PCI-PCI bridge, or a PCIe root port (one device behind it, at 00.0). */
export interface VmBridge {
  id: string;
  slot: string;
  /** Default 'pci-bridge'. */
  kind?: 'pci-bridge' | 'pcie-root-port';
}

/**
 * Guest PCI addresses: 0000:00:SS.F on the root bus; behind the Nth bridge (in slot
 * order) 0000:0N:SS.F, because SeaBIOS numbers secondary buses depth-first in slot
 * order and Linux keeps the firmware's numbering.
 */
export const defaultBridges: VmBridge[] = [
  { id: 'br0', slot: '10.0' },
  { id: 'br1', slot: '11.0' },
  // After the bridges' slots, so that their buses keep their numbers. A PCIe port: its device can have AER
  // (uncorrectable errors reach the guest's AER driver through the port; on the root bus they would reach no one).
  { id: 'rp0', slot: '12.0', kind: 'pcie-root-port' },
  // Hot-plug capable PCIe slots, after every other bridge so that no earlier bus number moves.
  { id: 'rp1', slot: '18.0', kind: 'pcie-root-port' },
  { id: 'rp2', slot: '19.0', kind: 'pcie-root-port' },
];

export const defaultDevices: VmDevice[] = [
  { model: 'edu', slot: '04.0', bind: 'vfio-pci' },
  { model: 'edu', slot: '05.0', bind: 'vfio-pci' },
  { model: 'pci-testdev', slot: '06.0', bind: 'vfio-pci' },
  {
    model: 'nvme', slot: '07.0', bind: 'vfio-pci', props: ',serial=upci-nvme0',
    namespaces: [
      { id: 'nvme0n1', sizeMiB: 64 },
      { id: 'nvme0n2', sizeMiB: 96, props: ',logical_block_size=4096,physical_block_size=4096' },
    ],
  },
  { model: 'nvme', slot: '0a.0', bind: 'vfio-pci', props: ',serial=upci-nvme1', namespaces: [{ id: 'nvme1n1', sizeMiB: 16 }] },
  // The kernel's own nvme driver gets this one in bench:nvme (identical to 0a.0); unbound otherwise.
  { model: 'nvme', slot: '0b.0', props: ',serial=upci-nvme2', namespaces: [{ id: 'nvme2n1', sizeMiB: 16 }] },
  // romfile=: nothing boots from the NICs, so SeaBIOS need not load and run iPXE.
  { model: 'e1000e', slot: '08.0', bind: 'vfio-pci', props: ',romfile=', hub: 1 },
  // Its link partner on the same hub, driven by the guest kernel's e1000e.ko.
  { model: 'e1000e', slot: '09.0', bind: 'e1000e', props: ',romfile=', hub: 1 },
  // Behind the conventional bridge both devices share the bridge's IOMMU group. The
  // e1000 is held by uio_pci_generic, a kernel driver that claims DMA ownership, so the
  // group is not viable for VFIO (pci-stub would not do: it leaves DMA ownership free).
  { model: 'edu', slot: '01.0', bus: 'br0', bind: 'vfio-pci' },
  { model: 'e1000', slot: '02.0', bus: 'br0', bind: 'uio_pci_generic', props: ',romfile=', hub: 2 },
  // Two devices of one viable group, so one VFIO container: both bound to vfio-pci behind a
  // bridge of their own (isolation.test: driver threads sharing the container's IOVA space).
  { model: 'edu', slot: '01.0', bus: 'br1', bind: 'vfio-pci' },
  { model: 'edu', slot: '02.0', bus: 'br1', bind: 'vfio-pci' },
  // A device with AER behind a PCIe root port, for aer.test (QEMU's pcie_aer_inject_error names it by its id).
  // virtio (modern only on a PCIe port), not e1000e: QEMU 7.2's e1000e has the AER capability but leaves its
  // Device Control error-reporting enables read-only zero (no pcie_cap_deverr_init), so QEMU drops every
  // error message it would send; nvme has no AER capability.
  { model: 'virtio-rng-pci', slot: '00.0', bus: 'rp0', bind: 'vfio-pci', props: ',aer=on,id=aer-dev' },
  // Devices a test unplugs and plugs again (hotplug.test), each alone behind a pcie-root-port.
  { model: 'edu', slot: '00.0', bus: 'rp1', bind: 'vfio-pci', hotplugId: 'hp-edu' },
  { model: 'nvme', slot: '00.0', bus: 'rp2', bind: 'vfio-pci', hotplugId: 'hp-nvme', props: ',serial=upci-nvme-hp', namespaces: [{ id: 'nvmehp1', sizeMiB: 16 }] },
  // virtio 1.x disks, modern only and behind the IOMMU (iommu_platform: VIRTIO_F_ACCESS_PLATFORM, which
  // upci's virtio-blk requires): upci's, and an identical one the guest kernel's virtio_blk takes once
  // loaded (virtio_pci, in the initramfs, claims it at boot; virtio_blk is loaded from the kernel package).
  { model: 'virtio-blk-pci', slot: '0c.0', bind: 'vfio-pci', props: ',disable-legacy=on,iommu_platform=on', drive: { id: 'vblk0', sizeMiB: 16 } },
  { model: 'virtio-blk-pci', slot: '0d.0', props: ',disable-legacy=on,iommu_platform=on', drive: { id: 'vblk1', sizeMiB: 16 } },
  // virtio 1.x NICs, modern only and behind the IOMMU, on a hub of their own: upci's, and its link partner, identical,
  // which the guest kernel's virtio_net takes once loaded (virtio_pci claims it at boot). QEMU's default queues of 256:
  // with rx_queue_size=1024 the kernel's used ring (page-aligned) straddles pages, and QEMU 7.2 behind its IOMMU loses
  // every 512th receive completion there (drivers/virtio/split-ring.ts places upci's so that it cannot).
  { model: 'virtio-net-pci', slot: '0e.0', bind: 'vfio-pci', props: ',disable-legacy=on,iommu_platform=on,romfile=', hub: 3 },
  { model: 'virtio-net-pci', slot: '0f.0', props: ',disable-legacy=on,iommu_platform=on,romfile=', hub: 3 },
];

const QEMU = 'qemu-system-x86_64';
const GUEST_OUT = '/tmp/upci-out';
const KILL_GRACE_MS = 2000;
// The 9p transports sit in fixed slots so that they never push a bench device around.
const HOSTROOT_SLOT = '1e.0';
const RESULTS_SLOT = '1d.0';
const PROJECT_SLOT = '1c.0';

export function findProjectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'vm', 'setup.sh'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error('vm/bench: cannot find the project root (no vm/setup.sh above this module)');
    dir = parent;
  }
}

function parseSlot(slot: string): { dev: number; fn: number } {
  const m = /^([0-9a-f]{1,2})\.([0-7])$/i.exec(slot);
  if (!m) throw new Error(`vm/bench: bad slot '${slot}' (expected e.g. '04.0')`);
  const dev = parseInt(m[1]!, 16);
  if (dev > 0x1f) throw new Error(`vm/bench: slot '${slot}' is beyond device 1f`);
  return { dev, fn: parseInt(m[2]!, 10) };
}

const hex2 = (n: number) => n.toString(16).padStart(2, '0');

/** The netdev id of a NIC's hub port (what `set_link` names), e.g. 'hub1-root-08.0'. */
export function hubPort(device: VmDevice): string {
  if (device.hub === undefined) throw new Error(`vm/bench: ${device.model}@${device.slot} is on no hub`);
  return `hub${device.hub}-${device.bus ?? 'root'}-${device.slot}`;
}

/** The device's PCI address as the guest sees it, e.g. '0000:01:01.0'. */
export function guestAddress(device: VmDevice, bridges: VmBridge[] = defaultBridges): string {
  const { dev, fn } = parseSlot(device.slot);
  let bus = 0;
  if (device.bus !== undefined) {
    const ordered = [...bridges].sort((a, b) => parseSlot(a.slot).dev - parseSlot(b.slot).dev);
    const index = ordered.findIndex((b) => b.id === device.bus);
    if (index < 0) throw new Error(`vm/bench: device ${device.model}@${device.slot} is on unknown bridge '${device.bus}'`);
    bus = index + 1;
  }
  return `0000:${hex2(bus)}:${hex2(dev)}.${fn}`;
}

// Root-bus slots the machine or the bench itself occupies.
const RESERVED_ROOT_SLOTS = new Map<number, string>([
  [0x00, 'the host bridge'],
  [parseSlot(HOSTROOT_SLOT).dev, 'the 9p hostroot share'],
  [parseSlot(RESULTS_SLOT).dev, 'the 9p results share'],
  [parseSlot(PROJECT_SLOT).dev, 'the 9p project share'],
  [0x1f, 'the ICH9 LPC/SATA/SMBus functions'],
]);

function checkSlots(devices: VmDevice[], bridges: VmBridge[]): void {
  const used = new Map<string, string>();
  const claim = (bus: string, slot: string, what: string) => {
    const { dev, fn } = parseSlot(slot);
    const reserved = bus === 'pcie.0' ? RESERVED_ROOT_SLOTS.get(dev) : undefined;
    const key = `${bus}:${hex2(dev)}.${fn}`;
    const holder = reserved ?? used.get(key);
    if (holder) throw new Error(`vm/bench: ${what} at ${bus} ${slot} collides with ${holder}`);
    used.set(key, what);
  };
  for (const b of bridges) claim('pcie.0', b.slot, `bridge ${b.id}`);
  for (const d of devices) claim(d.bus ?? 'pcie.0', d.slot, d.model);
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function jobScript(command: string[], cwd: string, env: Record<string, string>): string {
  if (command.length === 0) throw new Error('vm/bench: empty command');
  const lines = ['# written by vm/bench.ts, run by the guest init inside the host-root chroot'];
  for (const [k, v] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`vm/bench: bad environment variable name '${k}'`);
    lines.push(`export ${k}=${shellQuote(v)}`);
  }
  lines.push(`cd ${shellQuote(cwd)} || exit 125`, `exec ${command.map(shellQuote).join(' ')}`, '');
  return lines.join('\n');
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** Throws with the fix when the kernel or initramfs is missing or older than vm/init.sh / vm/setup.sh. */
function bootFiles(root: string): { kernel: string; initrd: string } {
  const cache = join(root, '.cache', 'vm');
  const kernel = join(cache, 'kernel');
  const initrd = join(cache, 'initramfs.gz');
  const keyFile = join(cache, 'initramfs.key');
  for (const f of [kernel, initrd, keyFile]) {
    if (!existsSync(f)) throw new Error(`vm/bench: ${f} is missing: run \`bash vm/setup.sh\``);
  }
  const key = new Map(
    readFileSync(keyFile, 'utf8')
      .split('\n')
      .map((l) => l.split(' ') as [string, string]),
  );
  for (const name of ['init.sh', 'setup.sh']) {
    if (key.get(name) !== sha256(join(root, 'vm', name))) {
      throw new Error(`vm/bench: the initramfs is older than vm/${name}: run \`bash vm/setup.sh\``);
    }
  }
  return { kernel, initrd };
}

/** The QEMU id of a device: its hotplugId, or for an nvme with namespaces the bus name its nvme-ns devices go on. */
function qdevId(d: VmDevice): string | undefined {
  return d.hotplugId ?? (d.namespaces?.length ? `${d.model}-${d.slot.replace('.', '-')}` : undefined);
}

/** The device's -device argument (without its netdev): what `device_add` takes to plug it again. */
function qdevLine(d: VmDevice): string {
  const id = qdevId(d);
  if (d.hotplugId !== undefined && (d.namespaces?.length ?? 0) > 1) throw new Error(`vm/bench: hot-pluggable ${d.model}@${d.slot} may have one namespace (on the controller), not ${d.namespaces!.length}`);
  const drive = d.drive !== undefined ? `,drive=${d.drive.id}` : d.hotplugId !== undefined && d.namespaces?.length ? `,drive=${d.namespaces[0]!.id}` : '';
  return `${d.model}${d.bus ? `,bus=${d.bus}` : ''},addr=${d.slot}${id === undefined ? '' : `,id=${id}`}${d.props ?? ''}${drive}`;
}

// The guest tty turns \n into \r\n.
const cleanConsole = (s: string) => s.replace(/\r/g, '');

export async function runInVm(opts: VmOptions): Promise<VmResult> {
  const root = findProjectRoot();
  const files = bootFiles(root);
  const bridges = opts.bridges ?? defaultBridges.filter((b) => opts.devices.some((d) => d.bus === b.id));
  checkSlots(opts.devices, bridges);

  const outDir = await mkdtemp(join(tmpdir(), 'upci-vm-'));
  try {
    return await boot(opts, { root, bridges, outDir, ...files });
  } catch (e) {
    // No result carries outDir to the caller, so nobody else would remove it.
    await rm(outDir, { recursive: true, force: true });
    throw e;
  }
}

interface BootContext {
  root: string;
  bridges: VmBridge[];
  outDir: string;
  kernel: string;
  initrd: string;
}

/**
 * The guest kernel's panic, if its console shows one and the guest ended without reporting a status (QEMU exits on
 * panic with -no-reboot): the panic's first line and where it was (the faulting RIP and the first frames of its
 * call trace), to be said where the suite's counts are; undefined when there was none.
 */
export function guestPanic(result: Pick<VmResult, 'exitCode' | 'timedOut' | 'console'>): string | undefined {
  if (result.exitCode !== null || result.timedOut) return undefined;
  const panic = /Kernel panic - not syncing: ([^\r\n]*)/.exec(result.console);
  if (panic === null) return undefined;
  const oops = /(?:Oops|PANIC|BUG): ([^\r\n]*)/.exec(result.console)?.[1];
  const rip = /RIP: 0010:(\S+)/.exec(result.console)?.[1];
  const frames = [...result.console.matchAll(/^\[[ \d.]+\]  ([a-z_][\w.]*\+0x[\da-f]+\/0x[\da-f]+)/gm)].slice(0, 4).map((m) => m[1]);
  return [panic[1], oops, rip && `at ${rip}`, frames.length > 0 && `via ${frames.join(' < ')}`].filter(Boolean).join('; ');
}

/**
 * Whether the guest kernel panicked while booting, before init reported ready: the job never ran. Seen once in
 * about forty boots of Debian's 6.12 under TCG with two vCPUs (an int3 Oops in sched_clock_cpu during early
 * text patching, CI run 7): QEMU's, not the job's.
 */
export const panickedBeforeReady = (result: Pick<VmResult, 'exitCode' | 'timedOut' | 'console'>): boolean =>
  guestPanic(result) !== undefined && !/upci-vm: ready at/.test(result.console);

async function boot(opts: VmOptions, context: BootContext): Promise<VmResult> {
  for (let attempt = 1; ; attempt++) {
    const monitor = opts.monitor ? await MonitorRelay.start(context.outDir) : undefined;
    let result: VmResult;
    try {
      result = await bootWith(opts, context, monitor);
    } finally {
      await monitor?.close();
    }
    // Once: a second panic before the job is reported as it is.
    if (attempt > 1 || !panickedBeforeReady(result)) return result;
    opts.onConsole?.('\nvm/bench: the guest kernel panicked while booting, before the job ran: booting once more\n');
  }
}

async function bootWith(opts: VmOptions, { root, bridges, outDir, kernel, initrd }: BootContext, monitor: MonitorRelay | undefined): Promise<VmResult> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    HOME: '/tmp',
    UPCI_VM: '1',
    UPCI_VM_OUT: GUEST_OUT,
    ...(monitor ? { UPCI_VM_MONITOR: '1' } : {}),
    ...opts.env,
  };
  await writeFile(join(outDir, 'job.sh'), jobScript(opts.command, root, env));
  await writeFile(join(outDir, 'project.path'), `${root}\n`);
  const plan = opts.devices
    .filter((d) => d.bind !== undefined)
    .map((d) => `${guestAddress(d, bridges)} ${d.bind}\n`)
    .join('');
  await writeFile(join(outDir, 'bind.plan'), plan);
  // Lets guest code find its devices without repeating the address rules.
  await writeFile(
    join(outDir, 'devices.json'),
    JSON.stringify(opts.devices.map((d) => ({ ...d, address: guestAddress(d, bridges), ...(d.hotplugId === undefined ? {} : { qdev: qdevLine(d) }) })), null, 2),
  );

  const args = [
    '-M', 'q35,kernel-irqchip=split',
    '-accel', 'tcg',
    '-m', String(opts.memoryMiB ?? 1024),
    '-smp', String(opts.cpus ?? 1),
    // Must precede the PCI devices so that they are created behind it.
    '-device', 'intel-iommu,intremap=on,caching-mode=on',
    // -nodefaults: no default NIC/VGA taking slots. -display none rather than
    // -nographic: with no display SeaBIOS would also draw its screen on the serial port.
    '-nodefaults', '-display', 'none', '-serial', 'stdio', '-no-reboot',
    '-kernel', kernel,
    '-initrd', initrd,
    '-append', 'console=ttyS0 intel_iommu=on panic=-1 quiet no_timer_check',
    '-fsdev', 'local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap',
    '-device', `virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot,addr=${HOSTROOT_SLOT}`,
    '-fsdev', `local,id=results,path=${outDir},security_model=none`,
    '-device', `virtio-9p-pci,fsdev=results,mount_tag=results,addr=${RESULTS_SLOT}`,
    '-fsdev', `local,id=project,path=${root},security_model=none,readonly=on,multidevs=remap`,
    '-device', `virtio-9p-pci,fsdev=project,mount_tag=project,addr=${PROJECT_SLOT}`,
  ];
  bridges.forEach((b, i) => {
    if (b.kind === 'pcie-root-port') {
      // Hot-plug capable by default. QEMU 7.2's q35 signals its hot-plug through ACPI (the guest's acpiphp), not
      // the port's native hot-plug (pciehp): the guest names its slot by ACPI (seen: "0-3" for bus 3), not by a
      // physical slot number.
      args.push('-device', `pcie-root-port,id=${b.id},bus=pcie.0,addr=${b.slot},chassis=${i + 1}`);
    } else {
      // shpc=off: the guest's shpchp would otherwise fail on it and log errors.
      args.push('-device', `pci-bridge,id=${b.id},chassis_nr=${i + 1},addr=${b.slot},shpc=off`);
    }
  });
  for (const d of opts.devices) {
    let netdev = '';
    if (d.hub !== undefined) {
      args.push('-netdev', `hubport,id=${hubPort(d)},hubid=${d.hub}`);
      netdev = `,netdev=${hubPort(d)}`;
    }
    for (const ns of [...d.namespaces ?? [], ...d.drive === undefined ? [] : [d.drive]]) {
      if (!/^[A-Za-z][A-Za-z0-9_-]*$/.test(ns.id)) throw new Error(`vm/bench: bad namespace id '${ns.id}'`);
      const image = join(outDir, `${ns.id}.img`);
      await writeFile(image, '');
      await truncate(image, ns.sizeMiB * 1024 * 1024);
      if (d.hotplugId === undefined) args.push('-drive', `file=${image},if=none,id=${ns.id},format=raw`);
      else args.push('-blockdev', `driver=raw,node-name=${ns.id},file.driver=file,file.filename=${image}`);
    }
    args.push('-device', `${qdevLine(d)}${netdev}`);
    if (d.hotplugId === undefined) {
      for (const [i, ns] of (d.namespaces ?? []).entries()) args.push('-device', `nvme-ns,drive=${ns.id},bus=${qdevId(d)},nsid=${i + 1}${ns.props ?? ''}`);
    }
  }
  if (monitor) args.push('-monitor', `unix:${monitor.socketPath},server=on,wait=off`);
  let qemuTraceLog: string | undefined;
  if (opts.qemuTrace?.length) {
    qemuTraceLog = join(outDir, 'qemu-trace.log');
    for (const pattern of opts.qemuTrace) args.push('-trace', `enable=${pattern}`);
    args.push('-trace', `file=${qemuTraceLog}`);
  }

  const child = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let consoleText = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    const text = cleanConsole(chunk);
    consoleText += text;
    opts.onConsole?.(text);
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });

  // A dying host process must not leave a QEMU spinning a CPU.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  let timedOut = false;
  let graceTimer: NodeJS.Timeout | undefined;
  const stop = () => {
    timedOut = true;
    child.kill('SIGTERM');
    graceTimer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
  };
  const timer = setTimeout(stop, opts.timeoutMs);
  if (opts.signal?.aborted) stop();
  else opts.signal?.addEventListener('abort', stop, { once: true });

  let exit: { code: number | null; signal: NodeJS.Signals | null };
  try {
    exit = await new Promise((resolve, reject) => {
      child.once('error', (e: NodeJS.ErrnoException) =>
        reject(
          e.code === 'ENOENT'
            ? new Error(`vm/bench: ${QEMU} not found: run \`bash vm/setup.sh\``)
            : e,
        ),
      );
      child.once('close', (code, signal) => resolve({ code, signal }));
    });
  } finally {
    clearTimeout(timer);
    clearTimeout(graceTimer);
    opts.signal?.removeEventListener('abort', stop);
    process.removeListener('exit', killOnExit);
  }

  // QEMU exits 0 on guest power-off and on panic (-no-reboot); anything else is QEMU itself failing.
  if (!timedOut && exit.code !== 0) {
    throw new Error(`vm/bench: ${QEMU} failed (exit ${exit.code ?? exit.signal}):\n${stderr.trim()}\nqemu ${args.join(' ')}`);
  }

  const status = await readIfExists(join(outDir, 'status'));
  const guestError = (await readIfExists(join(outDir, 'init-error')))?.trim();
  const result: VmResult = {
    exitCode: timedOut || status === undefined ? null : Number.parseInt(status, 10),
    timedOut,
    output: (await readIfExists(join(outDir, 'output.log'))) ?? '',
    dmesg: (await readIfExists(join(outDir, 'dmesg.log'))) ?? '',
    console: consoleText,
    outDir,
    qemuStderr: stderr,
  };
  if (qemuTraceLog) result.qemuTraceLog = qemuTraceLog;
  if (guestError) result.guestError = guestError;
  return result;
}
