/**
 * What Linux's sysfs says about PCI functions, and the driver binding that
 * makes them usable through VFIO. The root is a parameter so tests can point
 * it at a fabricated tree.
 */
import { existsSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { UpciError } from '../errors.js';
import { parsePciAddress, type PciAddress } from '../pci-address.js';
import type { PcieErrorCount } from '../port.js';

export interface SysfsRoots {
  readonly sys: string;
  readonly dev: string;
}

export const defaultRoots: SysfsRoots = { sys: '/sys', dev: '/dev' };

export interface PciFunctionInfo {
  readonly address: PciAddress;
  readonly vendor: number;
  readonly device: number;
  readonly classCode: number;
  readonly subsystemVendor: number;
  readonly subsystemDevice: number;
  /** Bound kernel driver, or undefined when none is. */
  readonly driver: string | undefined;
  readonly iommuGroup: number | undefined;
}

/** Drivers that leave a group usable by VFIO (they never start DMA of their own). */
const VFIO_FRIENDLY_DRIVERS = new Set(['vfio-pci', 'pcieport']);

function deviceDir(roots: SysfsRoots, address: PciAddress): string {
  return join(roots.sys, 'bus/pci/devices', address);
}

function readHex(path: string): number {
  return parseInt(readFileSync(path, 'utf8').trim(), 16);
}

function linkName(path: string): string | undefined {
  try {
    return basename(readlinkSync(path));
  } catch {
    return undefined;
  }
}

export function functionInfo(roots: SysfsRoots, address: PciAddress): PciFunctionInfo {
  const dir = deviceDir(roots, address);
  if (!existsSync(dir)) {
    throw new UpciError('NO_DEVICE', `no PCI device at ${address}`, 'check the address with `upci list`');
  }
  const group = linkName(join(dir, 'iommu_group'));
  return {
    address,
    vendor: readHex(join(dir, 'vendor')),
    device: readHex(join(dir, 'device')),
    classCode: readHex(join(dir, 'class')),
    subsystemVendor: readHex(join(dir, 'subsystem_vendor')),
    subsystemDevice: readHex(join(dir, 'subsystem_device')),
    driver: linkName(join(dir, 'driver')),
    iommuGroup: group === undefined ? undefined : Number(group),
  };
}

export function listFunctions(roots: SysfsRoots): PciFunctionInfo[] {
  const dir = join(roots.sys, 'bus/pci/devices');
  if (!existsSync(dir)) return [];
  return readdirSync(dir).sort().map((name) => functionInfo(roots, parsePciAddress(name)));
}

export function groupMembers(roots: SysfsRoots, group: number): PciFunctionInfo[] {
  const dir = join(roots.sys, 'kernel/iommu_groups', String(group), 'devices');
  return readdirSync(dir).sort().map((name) => functionInfo(roots, parsePciAddress(name)));
}

/** Members of the group whose drivers keep VFIO from using it (what VFIO_GROUP_GET_STATUS will call not viable). */
export function groupBlockers(roots: SysfsRoots, group: number): PciFunctionInfo[] {
  return groupMembers(roots, group).filter((f) => f.driver !== undefined && !VFIO_FRIENDLY_DRIVERS.has(f.driver));
}

export function describeBlockers(blockers: readonly PciFunctionInfo[]): string {
  return blockers.map((b) => `${b.address} (bound to ${b.driver})`).join(', ');
}

export function noIommuGroupError(address: PciAddress): UpciError {
  return new UpciError(
    'NO_IOMMU_GROUP',
    `${address} has no IOMMU group: the kernel runs without an IOMMU for it, so a userland driver could make the device write anywhere in memory`,
    'enable the IOMMU (VT-d/AMD-Vi in firmware, and intel_iommu=on or amd_iommu=on on the kernel command line); upci refuses devices without one',
  );
}

/** The checks VFIO would fail with an opaque errno, made first so the user hears why. */
export function requireUsable(roots: SysfsRoots, address: PciAddress): { info: PciFunctionInfo; group: number } {
  const info = functionInfo(roots, address);
  if (info.iommuGroup === undefined) throw noIommuGroupError(address);
  if (info.driver !== 'vfio-pci') {
    throw new UpciError(
      'NOT_BOUND',
      `${address} is ${info.driver === undefined ? 'not bound to any driver' : `bound to ${info.driver}`}, not to vfio-pci`,
      `run \`upci bind ${address}\` (as root) to hand it to vfio-pci`,
    );
  }
  if (!existsSync(join(roots.dev, 'vfio/vfio'))) {
    throw new UpciError(
      'NO_VFIO',
      `${join(roots.dev, 'vfio/vfio')} is missing: the VFIO driver is not loaded`,
      'load it with `modprobe vfio-pci` (and make sure devtmpfs is mounted on /dev)',
    );
  }
  return { info, group: info.iommuGroup };
}

function writeAttr(path: string, value: string, what: string): void {
  try {
    writeFileSync(path, value);
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') {
      throw new UpciError('PERMISSION', `${what}: permission denied writing ${path}`, 'run the command as root', { cause });
    }
    throw new UpciError('KERNEL', `${what}: writing ${path} failed (${code})`, undefined, { cause });
  }
}

/** Hands the function to vfio-pci, then checks that its whole IOMMU group is usable. */
export function bindVfio(roots: SysfsRoots, address: PciAddress): PciFunctionInfo {
  const info = functionInfo(roots, address);
  if (info.iommuGroup === undefined) throw noIommuGroupError(address);
  if (!existsSync(join(roots.sys, 'bus/pci/drivers/vfio-pci'))) {
    throw new UpciError('NO_VFIO', 'the vfio-pci driver is not loaded', 'load it with `modprobe vfio-pci`, then bind again');
  }
  const dir = deviceDir(roots, address);
  if (info.driver !== 'vfio-pci') {
    writeAttr(join(dir, 'driver_override'), 'vfio-pci', `binding ${address}`);
    if (info.driver !== undefined) writeAttr(join(dir, 'driver/unbind'), address, `unbinding ${address} from ${info.driver}`);
    writeAttr(join(roots.sys, 'bus/pci/drivers_probe'), address, `probing ${address}`);
  }
  const bound = functionInfo(roots, address);
  if (bound.driver !== 'vfio-pci') {
    throw new UpciError('KERNEL', `vfio-pci did not take ${address} (driver now: ${bound.driver ?? 'none'})`, 'see the kernel log (dmesg) for why');
  }
  const blockers = groupBlockers(roots, info.iommuGroup);
  if (blockers.length > 0) {
    throw new UpciError(
      'GROUP_NOT_VIABLE',
      `${address} is bound to vfio-pci, but IOMMU group ${info.iommuGroup} also holds ${describeBlockers(blockers)}; VFIO can only use a group when no kernel driver can DMA within it`,
      `bind every device of the group: ${blockers.map((b) => `upci bind ${b.address}`).join('; ')}`,
    );
  }
  return bound;
}

/** Gives the function back to the kernel's own driver (or none). */
export function unbindVfio(roots: SysfsRoots, address: PciAddress): PciFunctionInfo {
  const info = functionInfo(roots, address);
  const dir = deviceDir(roots, address);
  if (info.driver === 'vfio-pci') writeAttr(join(dir, 'driver/unbind'), address, `unbinding ${address}`);
  writeAttr(join(dir, 'driver_override'), '\n', `clearing the driver override of ${address}`);
  writeAttr(join(roots.sys, 'bus/pci/drivers_probe'), address, `probing ${address}`);
  return functionInfo(roots, address);
}

/**
 * The uncorrectable PCIe errors the kernel's AER driver has counted for the
 * function (drivers/pci/pcie/aer.c: aer_dev_fatal and aer_dev_nonfatal, one
 * `NAME COUNT` line per status bit, then a TOTAL line): the named ones only.
 * Undefined when the kernel keeps no AER statistics for it (no AER
 * capability, no CONFIG_PCIEAER, or the firmware kept AER to itself).
 */
export function aerErrorCounts(roots: SysfsRoots, address: PciAddress): PcieErrorCount[] | undefined {
  const counts: PcieErrorCount[] = [];
  for (const severity of ['fatal', 'nonfatal'] as const) {
    let text: string;
    try {
      text = readFileSync(join(deviceDir(roots, address), `aer_dev_${severity}`), 'utf8');
    } catch {
      return undefined;
    }
    for (const line of text.split('\n')) {
      const m = /^(\S+) (\d+)$/.exec(line.trim());
      if (m === null || m[1] === 'Undefined' || m[1]!.startsWith('TOTAL_')) continue;
      counts.push({ name: m[1]!, severity, count: Number(m[2]) });
    }
  }
  return counts;
}
