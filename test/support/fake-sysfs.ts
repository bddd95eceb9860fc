/** A fabricated /sys and /dev for the sysfs and VFIO checks (unit tests). */
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SysfsRoots } from '../../kernel/linux/sysfs.js';

export interface FakeFunction { address: string; driver?: string; group?: number }

/** A fabricated /sys and /dev with the files the checks read. */
export function fakeRoots(functions: FakeFunction[], vfio = true): SysfsRoots {
  const root = mkdtempSync(join(tmpdir(), 'upci-sysfs-'));
  const sys = join(root, 'sys');
  const dev = join(root, 'dev');
  mkdirSync(join(sys, 'bus/pci/devices'), { recursive: true });
  mkdirSync(join(dev, 'vfio'), { recursive: true });
  if (vfio) writeFileSync(join(dev, 'vfio/vfio'), '');
  for (const f of functions) {
    const dir = join(sys, 'devices/pci0000:00', f.address);
    mkdirSync(dir, { recursive: true });
    for (const [name, value] of [['vendor', '0x1234'], ['device', '0x11e8'], ['class', '0x00ff00'], ['subsystem_vendor', '0x1af4'], ['subsystem_device', '0x1100']]) {
      writeFileSync(join(dir, name!), `${value}\n`);
    }
    symlinkSync(dir, join(sys, 'bus/pci/devices', f.address));
    if (f.driver !== undefined) {
      mkdirSync(join(sys, 'bus/pci/drivers', f.driver), { recursive: true });
      symlinkSync(join(sys, 'bus/pci/drivers', f.driver), join(dir, 'driver'));
    }
    if (f.group !== undefined) {
      const groupDir = join(sys, 'kernel/iommu_groups', String(f.group));
      mkdirSync(join(groupDir, 'devices'), { recursive: true });
      symlinkSync(groupDir, join(dir, 'iommu_group'));
      symlinkSync(dir, join(groupDir, 'devices', f.address));
    }
  }
  return { sys, dev };
}

