import test from 'ava';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { aerErrorCounts, groupBlockers, listFunctions, requireUsable } from '../../kernel/linux/sysfs.js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fakeRoots } from '../support/fake-sysfs.js';
import { VfioPort } from '../../kernel/linux/vfio.js';

const edu = parsePciAddress('0000:00:04.0');

test('a usable function: bound to vfio-pci with an IOMMU group', (t) => {
  const roots = fakeRoots([{ address: edu, driver: 'vfio-pci', group: 3 }]);
  t.is(requireUsable(roots, edu).group, 3);
  t.like(listFunctions(roots)[0], { address: edu, vendor: 0x1234, device: 0x11e8, classCode: 0xff00, driver: 'vfio-pci', iommuGroup: 3 });
});

test('no device at the address', (t) => {
  const roots = fakeRoots([]);
  t.throws(() => requireUsable(roots, edu), { code: 'NO_DEVICE', message: /no PCI device at 0000:00:04\.0[\s\S]*upci list/ } as never);
});

test('no IOMMU group: refused with the kernel options to fix it', (t) => {
  const roots = fakeRoots([{ address: edu, driver: 'vfio-pci' }]);
  t.throws(() => requireUsable(roots, edu), { code: 'NO_IOMMU_GROUP', message: /intel_iommu=on/ } as never);
});

test('not bound to vfio-pci: names the current driver and the bind command', (t) => {
  t.throws(() => requireUsable(fakeRoots([{ address: edu, driver: 'e1000e', group: 1 }]), edu), {
    code: 'NOT_BOUND', message: /bound to e1000e, not to vfio-pci[\s\S]*upci bind 0000:00:04\.0/,
  } as never);
  t.throws(() => requireUsable(fakeRoots([{ address: edu, group: 1 }]), edu), { code: 'NOT_BOUND', message: /not bound to any driver/ } as never);
});

test('/dev/vfio missing: says to load vfio-pci', (t) => {
  const roots = fakeRoots([{ address: edu, driver: 'vfio-pci', group: 3 }], false);
  t.throws(() => requireUsable(roots, edu), { code: 'NO_VFIO', message: /modprobe vfio-pci/ } as never);
});

test('group blockers: kernel drivers block a group, vfio-pci, pcieport and no driver do not', (t) => {
  const roots = fakeRoots([
    { address: '0000:01:00.0', driver: 'vfio-pci', group: 7 },
    { address: '0000:01:00.1', driver: 'snd_hda_intel', group: 7 },
    { address: '0000:00:1c.0', driver: 'pcieport', group: 7 },
    { address: '0000:01:00.2', group: 7 },
  ]);
  t.deepEqual(groupBlockers(roots, 7).map((b) => b.address), ['0000:01:00.1']);
});

test('the VFIO port reports these checks before any ioctl', (t) => {
  const port = new VfioPort(fakeRoots([{ address: edu, driver: 'nvme', group: 2 }]));
  t.throws(() => port.open(edu), { code: 'NOT_BOUND' } as never);
  const missing = new VfioPort(fakeRoots([{ address: edu, driver: 'vfio-pci', group: 2 }]));
  // /dev/vfio/vfio exists in the fake tree, /dev/vfio/2 does not.
  t.throws(() => missing.open(edu), { code: 'NO_VFIO', message: /\/vfio\/2 is missing/ } as never);
});

test('the AER counts of a function: the named lines of aer_dev_fatal and aer_dev_nonfatal, as the kernel prints them; none without the files', (t) => {
  const roots = fakeRoots([{ address: edu, driver: 'vfio-pci', group: 3 }]);
  t.is(aerErrorCounts(roots, edu), undefined, 'no AER statistics: no count');
  const dir = join(roots.sys, 'bus/pci/devices', edu);
  // drivers/pci/pcie/aer.c's layout: one `NAME COUNT` line per status bit (unnamed bits "Undefined"), then the total.
  writeFileSync(join(dir, 'aer_dev_fatal'), 'Undefined 0\nDLP 0\nSDES 0\nUndefined 0\nMalfTLP 2\nTOTAL_ERR_FATAL 2\n');
  writeFileSync(join(dir, 'aer_dev_nonfatal'), 'Undefined 0\nDLP 0\nCmpltTO 0\nUnsupReq 1\nTOTAL_ERR_NONFATAL 1\n');
  t.deepEqual(aerErrorCounts(roots, edu), [
    { name: 'DLP', severity: 'fatal', count: 0 },
    { name: 'SDES', severity: 'fatal', count: 0 },
    { name: 'MalfTLP', severity: 'fatal', count: 2 },
    { name: 'DLP', severity: 'nonfatal', count: 0 },
    { name: 'CmpltTO', severity: 'nonfatal', count: 0 },
    { name: 'UnsupReq', severity: 'nonfatal', count: 1 },
  ]);
});
