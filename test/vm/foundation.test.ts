/**
 * The foundation in the VM: BARs as SharedArrayBuffers, bus_space over MMIO
 * and I/O ports, config space against sysfs, release and error paths.
 */
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { VfioPort } from '../../kernel/linux/vfio.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../pci/config.js';
import { PciDevice } from '../../pci/device.js';
import { defaultKernelPort } from '../../pci/kernel-port.js';
import { bench, sysfsAttribute, sysfsBusMaster, sysfsConfig, sysfsResources } from './devices.js';
import { EDU } from '../../drivers/edu-registers.js';
import { within } from '../support/bounded.js';
import { recordingPort, type PortRecord } from '../support/recording-port.js';


function withDevice<T>(address: string, use: (d: PciDevice) => T): T {
  const device = PciDevice.open(address);
  try {
    return use(device);
  } finally {
    device.close();
  }
}

test('edu: identification, liveness and factorial through the SharedArrayBuffer-mapped BAR0', (t) => {
  withDevice(bench.edu, (edu) => {
    const bar = edu.mapBar(0);
    t.is(bar.kind, 'mapped');
    t.is(bar.size, 1 << 20);
    t.is(bar.read4(EDU.ID), 0x010000ed);
    for (const value of [0x12345678, 0, 0xffffffff, 0xa5a5a5a5]) {
      bar.write4(EDU.LIVENESS, value);
      t.is(bar.read4(EDU.LIVENESS), ~value >>> 0);
    }
    bar.write4(EDU.FACTORIAL, 10);
    const deadline = Date.now() + 10_000;
    while (bar.read4(EDU.STATUS) & EDU.STATUS_COMPUTING) {
      if (Date.now() > deadline) throw new Error('edu\'s factorial was still computing after 10 s');
    }
    t.is(bar.read4(EDU.FACTORIAL), 3628800);
  });
});

test('a worker thread given the BAR by postMessage reads the same registers (shared, not copied)', async (t) => {
  const edu = PciDevice.open(bench.edu);
  try {
    const bar = edu.mapBar(0);
    if (bar.kind !== 'mapped') return t.fail('BAR0 is not mapped');
    bar.write4(EDU.LIVENESS, 0x0badf00d);
    const seen = await within(30_000, new Promise<{ id: number; liveness: number }>((resolve, reject) => {
      const worker = new Worker(
        `const { parentPort, workerData } = require('node:worker_threads');
         const regs = new Uint32Array(workerData);
         const id = Atomics.load(regs, 0);
         Atomics.store(regs, 1, 0x600dcafe);
         parentPort.postMessage({ id, liveness: Atomics.load(regs, 1) });`,
        { eval: true, workerData: (bar as unknown as { buffer: SharedArrayBuffer }).buffer },
      );
      worker.once('message', resolve);
      worker.once('error', reject);
    }), 'the worker given the BAR never reported');
    t.is(seen.id >>> 0, 0x010000ed);
    t.is(seen.liveness >>> 0, ~0x600dcafe >>> 0);
    // The worker's write reached the device the main thread maps.
    t.is(bar.read4(EDU.LIVENESS), ~0x600dcafe >>> 0);
  } finally {
    edu.close();
  }
});

test('pci-testdev: its I/O-port BAR is read and written through the same bus_space API', (t) => {
  withDevice(bench.testdev, (dev) => {
    const io = dev.bars().find((b) => b.type === 'io');
    if (io === undefined) return t.fail('pci-testdev has no I/O BAR');
    const ports = dev.mapBar(io.index);
    t.is(ports.kind, 'trapped');
    // Select test 0, "portio-no-eventfd": each 1-byte write of the header's data byte to the
    // header's offset counts one (QEMU hw/misc/pci-testdev.c).
    ports.write1(0, 0);
    const header = Buffer.from(ports.readRegion(1, 0, 40));
    t.is(header.subarray(16, header.indexOf(0, 16)).toString('latin1'), 'portio-no-eventfd');
    const target = ports.read4(4);
    t.is(ports.read1(1), 1);
    const data = ports.read1(8);
    const before = ports.read4(12);
    for (let i = 0; i < 5; i++) ports.write1(target, data);
    ports.write1(target, data ^ 0xff); // wrong data: not counted
    t.is(ports.read4(12), before + 5);
  });
});

/** Linux's resource flags (include/linux/ioport.h), as sysfs's resource file shows them. */
const IORESOURCE_IO = 0x100n;
const IORESOURCE_MEM = 0x200n;
const IORESOURCE_PREFETCH = 0x2000n;
const IORESOURCE_MEM_64 = 0x100000n;

/** The BARs the kernel found, from its resource table: presence, type, prefetchability, size. */
function kernelBars(address: string): { index: number; type: string; prefetchable: boolean; size: number }[] {
  return sysfsResources(address).slice(0, 6).flatMap(({ start, end, flags }, index) => {
    if ((flags & (IORESOURCE_IO | IORESOURCE_MEM)) === 0n) return [];
    const type = flags & IORESOURCE_IO ? 'io' : flags & IORESOURCE_MEM_64 ? 'mem64' : 'mem32';
    return [{ index, type, prefetchable: (flags & IORESOURCE_PREFETCH) !== 0n, size: Number(end - start + 1n) }];
  });
}

/** Standard capability IDs, walked from the raw bytes sysfs gives (not with upci's walker). */
function rawCapabilityIds(config: Buffer): number[] {
  const ids: number[] = [];
  if ((config.readUInt16LE(0x06) & 0x10) === 0) return ids;
  for (let at = config[0x34]! & 0xfc; at !== 0 && ids.length < 48; at = config[at + 1]! & 0xfc) ids.push(config[at]!);
  return ids;
}

for (const [role, address] of [['edu', bench.edu], ['pci-testdev', bench.testdev], ['nvme', bench.nvme], ['e1000e', bench.e1000e]] as const) {
  test(`config space of ${role} matches what the kernel shows in sysfs (ids, class, BARs, capabilities)`, (t) => {
    withDevice(address, (dev) => {
      const number = (name: string) => Number(sysfsAttribute(address, name));
      const raw = sysfsConfig(address);
      t.like(dev.header(), {
        vendor: number('vendor'), device: number('device'), classCode: number('class'), revision: number('revision'),
        subsystemVendor: number('subsystem_vendor'), subsystemDevice: number('subsystem_device'), interruptPin: raw[0x3d],
      });
      const bars = kernelBars(address);
      t.true(bars.length > 0, `${role} has BARs`);
      t.deepEqual(dev.bars().map((b) => ({ index: b.index, type: b.type, prefetchable: b.prefetchable, size: b.size })), bars);
      t.deepEqual(dev.capabilities().filter((c) => !c.extended).map((c) => c.id), rawCapabilityIds(raw));
    });
  });
}

test('the edu and pci-testdev capability lists, and the nvme and e1000e MSI-X sizes, are what QEMU 7.2 gives them', (t) => {
  // hw/misc/edu.c: msi_init only. hw/misc/pci-testdev.c: no capability at all.
  t.deepEqual(withDevice(bench.edu, (d) => d.capabilities().map((c) => c.name)), ['msi']);
  t.deepEqual(withDevice(bench.testdev, (d) => d.capabilities().map((c) => c.name)), []);
  // hw/nvme/ctrl.c: msix_qsize defaults to 65; hw/net/e1000e.c: E1000E_MSIX_VEC_NUM is 5.
  t.is(withDevice(bench.nvme, (d) => d.msix()?.vectors), 65);
  t.is(withDevice(bench.e1000e, (d) => d.msix()?.vectors), 5);
});

test('out-of-bounds and misaligned register accesses throw; the device is untouched', (t) => {
  withDevice(bench.edu, (edu) => {
    const bar = edu.mapBar(0);
    bar.write4(EDU.LIVENESS, 1);
    t.throws(() => bar.read4(bar.size), { code: 'OUT_OF_RANGE' } as never);
    t.throws(() => bar.write4(bar.size - 2, 0), { code: 'OUT_OF_RANGE' } as never);
    t.throws(() => bar.write4(EDU.LIVENESS + 1, 7), { message: /not aligned/ });
    t.throws(() => edu.config.read(4, 4096), { code: 'OUT_OF_RANGE' } as never);
    t.throws(() => edu.mapBar(5), { code: 'NO_SUCH_REGION' } as never);
    t.is(bar.read4(EDU.LIVENESS), ~1 >>> 0);
  });
});

test('a released BAR handle neither crashes node nor reaches the device, in any thread', async (t) => {
  const edu = PciDevice.open(bench.edu);
  const bar = edu.mapBar(0);
  const stale = (bar as unknown as { buffer: SharedArrayBuffer }).buffer;
  bar.write4(EDU.LIVENESS, 0x11111111);
  edu.close();
  t.throws(() => bar.read4(EDU.ID), { code: 'RELEASED' } as never);
  t.throws(() => bar.write4(EDU.LIVENESS, 0x22222222), { code: 'RELEASED' } as never);
  // A view created before release, used from a worker after it: all-ones, no SIGBUS, no device access.
  const seen = await within(30_000, new Promise<number>((resolve, reject) => {
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const regs = new Uint32Array(workerData);
       Atomics.store(regs, 1, 0x33333333);
       parentPort.postMessage(Atomics.load(regs, 0));`,
      { eval: true, workerData: stale },
    );
    worker.once('message', resolve);
    worker.once('error', reject);
  }), 'the worker given the released BAR never reported');
  t.is(seen >>> 0, 0xffffffff);
  const direct = new Uint32Array(stale);
  direct[1] = 0x44444444;
  // edu has no reset under VFIO: the register still holds what was written before the close.
  t.is(withDevice(bench.edu, (again) => again.mapBar(0).read4(EDU.LIVENESS)), ~0x11111111 >>> 0);
});

test('close() turns bus mastering off before the kernel gets the fd back (read from sysfs while it is still open)', (t) => {
  const records: PortRecord[] = [];
  const edu = PciDevice.open(bench.edu, { port: recordingPort(defaultKernelPort(), records, (f) => sysfsBusMaster(f.address)) });
  edu.config.update(2, PCI_COMMAND, 0, PCI_COMMAND_MASTER);
  t.true(sysfsBusMaster(bench.edu), 'on, as the kernel sees it');
  edu.close();
  t.deepEqual(records, [`${bench.edu} close (bus master off)`]);
});

test('error: a bad PCI address', (t) => {
  t.throws(() => PciDevice.open('00:04'), { code: 'BAD_ADDRESS', message: /DDDD:BB:SS\.F/ } as never);
});

test('error: no device at a well-formed address', (t) => {
  // A bus no bridge of the bench makes (the bench's buses end at 5).
  t.throws(() => PciDevice.open('0000:7e:00.0'), { code: 'NO_DEVICE' } as never);
});

test('error: a device not bound to vfio-pci, then usable after `upci bind`', (t) => {
  const upci = (...args: string[]) => execFileSync(process.execPath, ['dist/bin/upci.js', ...args], { encoding: 'utf8' });
  upci('unbind', bench.edu2);
  try {
    t.throws(() => PciDevice.open(bench.edu2), { code: 'NOT_BOUND', message: new RegExp(`upci bind ${bench.edu2.replace(/\./g, '\\.')}`) } as never);
    t.regex(upci('list'), new RegExp(`${bench.edu2.replace(/\./g, '\\.')}\\s+1234:11e8.*not bound`));
  } finally {
    upci('bind', bench.edu2);
  }
  t.is(withDevice(bench.edu2, (d) => d.mapBar(0).read4(EDU.ID)), 0x010000ed);
});

test('error: an IOMMU group that also holds a device owned by a kernel driver is not viable', (t) => {
  const error = t.throws(() => PciDevice.open(bench.eduInSharedGroup), { code: 'GROUP_NOT_VIABLE' } as never);
  t.regex(error?.message ?? '', /uio_pci_generic/);
  t.regex(error?.message ?? '', /upci bind/);
});

test('`upci bind` on a device whose group is not viable explains which device blocks it', (t) => {
  const run = spawnSync(process.execPath, ['dist/bin/upci.js', 'bind', bench.eduInSharedGroup], { encoding: 'utf8' });
  t.is(run.status, 1);
  t.regex(run.stderr, /IOMMU group \d+ also holds 0000:01:02\.0 \(bound to uio_pci_generic\)/);
  t.regex(run.stderr, /fix: bind every device of the group: upci bind 0000:01:02\.0/);
  t.notRegex(run.stderr, /\n\s+at /, 'a clear error, not a stack trace');
});

test('error: /dev/vfio missing', (t) => {
  const dev = mkdtempSync(join(tmpdir(), 'upci-nodev-'));
  mkdirSync(join(dev, 'vfio'));
  const port = new VfioPort({ sys: '/sys', dev });
  t.throws(() => port.open(parsePciAddress(bench.edu)), { code: 'NO_VFIO', message: /modprobe vfio-pci/ } as never);
});

test('error: the same device opened twice', (t) => {
  withDevice(bench.edu, () => {
    t.throws(() => PciDevice.open(bench.edu), { code: 'BUSY' } as never);
  });
});
