/** The bench's devices by role, with the guest addresses vm/bench.ts gives them. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ManagedIommuDomain } from '../../kernel/linux/iommu-dma.js';
import type { IovaAllocator } from '../../kernel/linux/iova-allocator.js';
import { EDU } from '../../drivers/edu-registers.js';
import type { BusSpace } from '../../pci/bus-space.js';
import type { PciDevice } from '../../pci/device.js';
import { defaultBridges, defaultDevices, guestAddress, type VmDevice } from '../../vm/bench.js';

function find(model: string, nth = 0, where: (d: VmDevice) => boolean = (d) => d.bus === undefined): string {
  const device = defaultDevices.filter((d) => d.model === model && where(d))[nth];
  if (device === undefined) throw new Error(`the bench has no ${model} #${nth}`);
  return guestAddress(device);
}

export const bench = {
  edu: find('edu', 0),
  edu2: find('edu', 1),
  testdev: find('pci-testdev'),
  nvme: find('nvme'),
  nvme1: find('nvme', 1),
  e1000e: find('e1000e'),
  /** Behind a conventional bridge, sharing an IOMMU group with a device held by a kernel driver. */
  eduInSharedGroup: find('edu', 0, (d) => d.bus === 'br0'),
  /** Two edus behind a bridge of their own: one viable IOMMU group, one VFIO container. */
  eduPairInOneGroup: [find('edu', 0, (d) => d.bus === 'br1'), find('edu', 1, (d) => d.bus === 'br1')] as const,
  /** A virtio device with AER behind a PCIe root port (rp0): aer.test injects errors into it (QEMU id aer-dev). */
  aerDevice: find('virtio-rng-pci', 0, (d) => d.bus === 'rp0'),
  /** Its root port, bound to the guest's pcieport (whose AER service routes the device's errors to vfio-pci). */
  aerPort: `0000:00:${defaultBridges.find((b) => b.id === 'rp0')!.slot}`,
  /** Each alone behind a hot-plug capable pcie-root-port: hotplug.test unplugs and plugs them. */
  hotplugEdu: find('edu', 0, (d) => d.hotplugId !== undefined),
  hotplugNvme: find('nvme', 0, (d) => d.hotplugId !== undefined),
};

/** The IOVA space of a device's VFIO DMA domain (its allocations and quarantine). */
export function iovaSpace(device: PciDevice): IovaAllocator {
  const domain = device.kernel.dma;
  if (!(domain instanceof ManagedIommuDomain)) throw new Error(`${device.address}'s DMA domain has no IOVA space managed in this process`);
  return domain.iova;
}

/** What sysfs says, the reference config space reads are compared with. */
export function sysfsConfig(address: string): Buffer {
  return readFileSync(`/sys/bus/pci/devices/${address}/config`);
}

export function sysfsResources(address: string): { start: bigint; end: bigint; flags: bigint }[] {
  return readFileSync(`/sys/bus/pci/devices/${address}/resource`, 'utf8').trim().split('\n').map((line) => {
    const [start, end, flags] = line.trim().split(/\s+/).map((v) => BigInt(v));
    return { start: start!, end: end!, flags: flags! };
  });
}

/** One sysfs attribute of the function (vendor, class, ...), as the kernel prints it. */
export function sysfsAttribute(address: string, name: string): string {
  return readFileSync(`/sys/bus/pci/devices/${address}/${name}`, 'utf8').trim();
}

/** Bus mastering as the kernel reads it from the device's command register. */
export function sysfsBusMaster(address: string): boolean {
  return (sysfsConfig(address).readUInt16LE(0x04) & 0x4) !== 0;
}

/**
 * QEMU 7.2's edu refuses a transfer that ends at the end of its buffer (an
 * off-by-one in edu_check_range, fixed in QEMU 8.0) with hw_error, which
 * aborts QEMU: keep every transfer inside [0x40000, 0x40fff).
 */
export const EDU_CHUNK = 2048;

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/** Blocks this thread for `ms` (between polls of a device that works on its own). */
export const sleepSync = (ms: number) => void Atomics.wait(sleepCell, 0, 0, ms);

/** One edu DMA transfer, polled to completion (edu starts it ~100 ms of virtual time later). */
export function eduDma(bar: BusSpace, src: bigint, dst: bigint, count: number, toRam: boolean): void {
  bar.write8(EDU.DMA_SRC, src);
  bar.write8(EDU.DMA_DST, dst);
  bar.write4(EDU.DMA_COUNT, count);
  bar.write4(EDU.DMA_CMD, EDU.DMA_RUN | (toRam ? EDU.DMA_TO_RAM : 0));
  const deadline = Date.now() + 20_000;
  while (bar.read4(EDU.DMA_CMD) & EDU.DMA_RUN) {
    if (Date.now() > deadline) throw new Error('edu DMA never completed');
    sleepSync(2);
  }
}

/** The guest kernel's log. */
export function kernelLog(): string {
  try {
    return execFileSync('dmesg', { encoding: 'utf8' });
  } catch {
    return execFileSync('busybox', ['dmesg'], { encoding: 'utf8' });
  }
}

/** One VT-d fault the kernel logged, e.g. `DMAR: [DMA Write NO_PASID] Request device [00:0a.0] fault addr 0xfffff000 [fault reason 0x05] ...`. */
export interface DmarFault {
  /** `Read` or `Write`. */
  readonly access: string;
  /** bus:device.function, as the line gives it (no domain). */
  readonly device: string;
  /** The faulting page, as VT-d reports it. */
  readonly addr: bigint;
  readonly line: string;
}

/** The DMAR fault lines of the guest kernel's log, parsed (in log order). */
export function dmarFaults(): DmarFault[] {
  return kernelLog().split('\n').flatMap((line) => {
    const m = /DMAR: \[DMA (Read|Write)[^\]]*\] Request device \[([0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\](?: PASID \w+)? fault addr 0x([0-9a-f]+)/i.exec(line);
    return m === null ? [] : [{ access: m[1]!, device: m[2]!, addr: BigInt(`0x${m[3]}`), line }];
  });
}
