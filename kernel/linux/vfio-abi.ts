/**
 * <linux/vfio.h>, the parts upci uses. Layouts and numbers are checked
 * against the installed header by test/unit/abi.test.ts.
 */
import { Struct } from '../abi.js';

export const VFIO_API_VERSION = 0;
export const VFIO_TYPE1v2_IOMMU = 3;

/** VFIO ioctls are all _IO(';', VFIO_BASE + n): the argument size is in argsz instead. */
const io = (nr: number): number => (0x3b << 8) | (100 + nr);

export const ioctls = {
  VFIO_GET_API_VERSION: io(0),
  VFIO_CHECK_EXTENSION: io(1),
  VFIO_SET_IOMMU: io(2),
  VFIO_GROUP_GET_STATUS: io(3),
  VFIO_GROUP_SET_CONTAINER: io(4),
  VFIO_GROUP_UNSET_CONTAINER: io(5),
  VFIO_GROUP_GET_DEVICE_FD: io(6),
  VFIO_DEVICE_GET_INFO: io(7),
  VFIO_DEVICE_GET_REGION_INFO: io(8),
  VFIO_DEVICE_GET_IRQ_INFO: io(9),
  VFIO_DEVICE_SET_IRQS: io(10),
  VFIO_DEVICE_RESET: io(11),
  VFIO_IOMMU_GET_INFO: io(12),
  VFIO_IOMMU_MAP_DMA: io(13),
  VFIO_IOMMU_UNMAP_DMA: io(14),
} as const;

export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;

export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;
export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;

export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_VGA_REGION_INDEX = 8;

export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;

export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;

export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
/** AER: signalled on an uncorrectable error (PCIe functions only). */
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
/** Device request: signalled, again and again, while the kernel wants the device back (unbind, hot-unplug) until the user closes it. */
export const VFIO_PCI_REQ_IRQ_INDEX = 4;

export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;

export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;

export const vfioGroupStatus = new Struct('vfio_group_status', { argsz: 'u32', flags: 'u32' });

export const vfioDeviceInfo = new Struct('vfio_device_info', {
  argsz: 'u32', flags: 'u32', num_regions: 'u32', num_irqs: 'u32', cap_offset: 'u32',
});

export const vfioRegionInfo = new Struct('vfio_region_info', {
  argsz: 'u32', flags: 'u32', index: 'u32', cap_offset: 'u32', size: 'u64', offset: 'u64',
});

export const vfioInfoCapHeader = new Struct('vfio_info_cap_header', { id: 'u16', version: 'u16', next: 'u32' });

export const vfioRegionInfoCapSparseMmap = new Struct('vfio_region_info_cap_sparse_mmap', {
  'header.id': 'u16', 'header.version': 'u16', 'header.next': 'u32', nr_areas: 'u32', reserved: 'u32',
});

export const vfioRegionSparseMmapArea = new Struct('vfio_region_sparse_mmap_area', { offset: 'u64', size: 'u64' });

export const vfioIrqInfo = new Struct('vfio_irq_info', { argsz: 'u32', flags: 'u32', index: 'u32', count: 'u32' });

export const vfioIrqSet = new Struct('vfio_irq_set', {
  argsz: 'u32', flags: 'u32', index: 'u32', start: 'u32', count: 'u32',
});

export const vfioIommuType1Info = new Struct('vfio_iommu_type1_info', {
  argsz: 'u32', flags: 'u32', iova_pgsizes: 'u64', cap_offset: 'u32',
});

export const vfioIommuType1InfoCapIovaRange = new Struct('vfio_iommu_type1_info_cap_iova_range', {
  'header.id': 'u16', 'header.version': 'u16', 'header.next': 'u32', nr_iovas: 'u32', reserved: 'u32',
});

export const vfioIovaRange = new Struct('vfio_iova_range', { start: 'u64', end: 'u64' });

export const vfioIommuType1InfoDmaAvail = new Struct('vfio_iommu_type1_info_dma_avail', {
  'header.id': 'u16', 'header.version': 'u16', 'header.next': 'u32', avail: 'u32',
});

export const vfioIommuType1DmaMap = new Struct('vfio_iommu_type1_dma_map', {
  argsz: 'u32', flags: 'u32', vaddr: 'u64', iova: 'u64', size: 'u64',
});

export const vfioIommuType1DmaUnmap = new Struct('vfio_iommu_type1_dma_unmap', {
  argsz: 'u32', flags: 'u32', iova: 'u64', size: 'u64',
});

/** Every struct above, for the layout test. */
export const vfioStructs = [
  vfioGroupStatus, vfioDeviceInfo, vfioRegionInfo, vfioInfoCapHeader, vfioRegionInfoCapSparseMmap,
  vfioRegionSparseMmapArea, vfioIrqInfo, vfioIrqSet, vfioIommuType1Info, vfioIommuType1InfoCapIovaRange,
  vfioIovaRange, vfioIommuType1InfoDmaAvail, vfioIommuType1DmaMap, vfioIommuType1DmaUnmap,
];
