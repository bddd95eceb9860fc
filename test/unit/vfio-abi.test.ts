import test from 'ava';
import * as abi from '../../kernel/linux/vfio-abi.js';
import { expectedLayout, layoutProbe, runCProbe } from '../support/c-probe.js';

test('VFIO struct layouts match <linux/vfio.h>', (t) => {
  const source = `#include <stdio.h>\n#include <stddef.h>\n#include <linux/vfio.h>\nint main(void) {\n  ${layoutProbe(abi.vfioStructs)}\n  return 0;\n}\n`;
  t.deepEqual(runCProbe(source), expectedLayout(abi.vfioStructs));
});

test('VFIO ioctl numbers and flags match <linux/vfio.h>', (t) => {
  const names = [
    ...Object.keys(abi.ioctls),
    'VFIO_API_VERSION', 'VFIO_TYPE1v2_IOMMU', 'VFIO_GROUP_FLAGS_VIABLE', 'VFIO_DEVICE_FLAGS_RESET', 'VFIO_DEVICE_FLAGS_PCI',
    'VFIO_REGION_INFO_FLAG_MMAP', 'VFIO_REGION_INFO_FLAG_CAPS', 'VFIO_REGION_INFO_CAP_SPARSE_MMAP', 'VFIO_PCI_CONFIG_REGION_INDEX',
    'VFIO_PCI_ROM_REGION_INDEX', 'VFIO_PCI_VGA_REGION_INDEX', 'VFIO_IRQ_INFO_AUTOMASKED', 'VFIO_IRQ_INFO_MASKABLE', 'VFIO_IRQ_INFO_EVENTFD',
    'VFIO_IRQ_SET_DATA_NONE', 'VFIO_IRQ_SET_DATA_EVENTFD', 'VFIO_IRQ_SET_ACTION_UNMASK', 'VFIO_IRQ_SET_ACTION_TRIGGER',
    'VFIO_PCI_INTX_IRQ_INDEX', 'VFIO_PCI_MSI_IRQ_INDEX', 'VFIO_PCI_MSIX_IRQ_INDEX', 'VFIO_PCI_ERR_IRQ_INDEX', 'VFIO_PCI_REQ_IRQ_INDEX', 'VFIO_IOMMU_INFO_CAPS',
    'VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE', 'VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL', 'VFIO_DMA_MAP_FLAG_READ', 'VFIO_DMA_MAP_FLAG_WRITE',
  ];
  const prints = names.map((n, i) => `printf("%s\\"${n}\\": %lu", ${i === 0 ? '""' : '", "'}, (unsigned long)(${n}));`).join('\n  ');
  const source = `#include <stdio.h>\n#include <linux/vfio.h>\nint main(void) {\n  printf("{");\n  ${prints}\n  printf("}\\n");\n  return 0;\n}\n`;
  const ours = { ...abi.ioctls, ...Object.fromEntries(names.filter((n) => !(n in abi.ioctls)).map((n) => [n, (abi as Record<string, unknown>)[n]])) };
  t.deepEqual(runCProbe(source), ours);
});
