/**
 * <dev/pci/pciuserio.h> (kernel/netbsd/sys/dev/pci/pciuserio.h), the ABI of a
 * claimed function on NetBSD's /dev/pciN, plus the one pci(4) ioctl upci
 * needs from <dev/pci/pciio.h>. Layouts and numbers are checked against the
 * header by test/unit/netbsd-abi.test.ts (host cc and clang for
 * x86_64-unknown-netbsd).
 */
import { Struct, type FieldType } from '../abi.js';

/**
 * NetBSD's <sys/ioccom.h> encoding: direction in bits 29-31, argument size
 * in bits 16-28, group in bits 8-15, number in bits 0-7. Computed rather
 * than copied so that a struct size change moves the number with it.
 */
const IOCPARM_MASK = 0x1fff;
const IOC_VOID = 0x20000000;
const IOC_OUT = 0x40000000;
const IOC_IN = 0x80000000;

function ioc(direction: number, group: string, num: number, size: number): number {
  return (direction | ((size & IOCPARM_MASK) << 16) | (group.charCodeAt(0) << 8) | num) >>> 0;
}
const io = (group: string, num: number): number => ioc(IOC_VOID, group, num, 0);
const ior = (group: string, num: number, s: { size: number }): number => ioc(IOC_OUT, group, num, s.size);
const iow = (group: string, num: number, s: { size: number }): number => ioc(IOC_IN, group, num, s.size);
const iowr = (group: string, num: number, s: { size: number }): number => ioc(IOC_IN | IOC_OUT, group, num, s.size);

export const PCIUSER_ABI_VERSION = 2;
export const PCIUSER_MAXBARS = 6;
export const PCIUSER_MAXVECS = 32;
/** Most segments of one dmamem or dmamap. */
export const PCIUSER_DMA_MAXSEGS = 1024;

/** mmap(2) offsets: memory BAR b at (1 + b) << 40, DMA memory id i (>= 16) at i << 40. */
export const PCIUSER_MMAP_SHIFT = 40;
/** PCIUSER_MMAP_BAR(bar); a number, since 7 << 40 is well inside 2^53. */
export const pciuserMmapBar = (bar: number): number => (1 + bar) * 2 ** PCIUSER_MMAP_SHIFT;
export const PCIUSER_DMAMEM_ID_MIN = 16;
export const PCIUSER_DMAMEM_ID_MAX = (1 << 22) - 1;

export const PCIUSER_BAR_VALID = 0x01;
export const PCIUSER_BAR_IO = 0x02;
export const PCIUSER_BAR_MEM64 = 0x04;
export const PCIUSER_BAR_PREFETCH = 0x08;
export const PCIUSER_BAR_MMAP = 0x10;
/** Implemented but given no address by firmware: neither PIO nor mmap. */
export const PCIUSER_BAR_UNASSIGNED = 0x20;

export const PCIUSER_CAP_INTX_DISABLE = 0x01;
export const PCIUSER_CAP_MSI = 0x02;
export const PCIUSER_CAP_MSIX = 0x04;
export const PCIUSER_CAP_DMA64 = 0x08;

export const PCIUSER_INTR_INTX = 0;
export const PCIUSER_INTR_MSI = 1;
export const PCIUSER_INTR_MSIX = 2;

export const PCIUSER_ACK_ENABLE = 0x01;
export const PCIUSER_ACK_STATUS = 0x02;

export const PCIUSER_DMA_COHERENT = 0x01;
export const PCIUSER_DMA_64BIT = 0x02;
export const PCIUSER_DMA_PREFETCH = 0x04;

export const PCIUSER_LOAD_READ = 0x01;
export const PCIUSER_LOAD_WRITE = 0x02;

export const PCIUSER_SYNC_PREREAD = 0x01;
export const PCIUSER_SYNC_POSTREAD = 0x02;
export const PCIUSER_SYNC_PREWRITE = 0x04;
export const PCIUSER_SYNC_POSTWRITE = 0x08;

const barSpec = {
  pub_base: 'u64', pub_size: 'u64', pub_cookie: 'u64', pub_reg: 'u32', pub_flags: 'u32',
  // The kernel's ranges of the BAR (size 0: none here): no PIO, no mmap of their pages.
  pub_msix_table: 'u64', pub_msix_table_size: 'u64', pub_msix_pba: 'u64', pub_msix_pba_size: 'u64',
} as const satisfies Record<string, FieldType>;

export const pciuserBar = new Struct('pciuser_bar', barSpec);

export type BarIndex = 0 | 1 | 2 | 3 | 4 | 5;
type BarField = keyof typeof barSpec;
type ClaimBarFields = { [K in `puc_bars[${BarIndex}].${BarField}`]: K extends `${string}.${infer F extends BarField}` ? (typeof barSpec)[F] : never };

/**
 * Struct has no arrays, so puc_bars[6] is spelled out member by member
 * (`puc_bars[2].pub_size`): C accepts the same designators in offsetof, so
 * the layout test checks every one of them.
 */
function claimBars(): ClaimBarFields {
  const fields: Record<string, FieldType> = {};
  for (let b = 0; b < PCIUSER_MAXBARS; b++) {
    for (const [name, type] of Object.entries(barSpec)) fields[`puc_bars[${b}].${name}`] = type;
  }
  return fields as ClaimBarFields;
}

export const pciuserClaim = new Struct('pciuser_claim', {
  puc_bus: 'u32', puc_device: 'u32', puc_function: 'u32', puc_flags: 'u32',
  puc_version: 'u32', puc_id: 'u32', puc_class: 'u32', puc_subsys: 'u32',
  puc_intrpin: 'u32', puc_caps: 'u32', puc_msi_count: 'u32', puc_msix_count: 'u32',
  puc_cfgsize: 'u32', puc_pad: 'u32',
  ...claimBars(),
});

/** Member name of BAR `bar`'s field in pciuserClaim. */
export const claimBarField = <F extends BarField>(bar: BarIndex, field: F): `puc_bars[${BarIndex}].${F}` => `puc_bars[${bar}].${field}`;

export const pciuserCfgreg = new Struct('pciuser_cfgreg', { pcr_reg: 'u32', pcr_val: 'u32' });

export const pciuserPio = new Struct('pciuser_pio', {
  pio_bar: 'u32', pio_width: 'u32', pio_offset: 'u64', pio_value: 'u64',
});

export const pciuserIntrSetup = new Struct('pciuser_intr_setup', {
  pis_type: 'u32', pis_count: 'u32', pis_flags: 'u32', pis_pad: 'u32',
});

export const pciuserIntrAck = new Struct('pciuser_intr_ack', {
  pia_flags: 'u32', pia_bar: 'u32', pia_width: 'u32', pia_pad: 'u32',
  pia_offset: 'u64', pia_value: 'u64', pia_status_offset: 'u64', pia_status_mask: 'u64',
});

export const pciuserIntrUnmask = new Struct('pciuser_intr_unmask', { piu_vector: 'u32', piu_pad: 'u32' });

/** The records read(2) returns from a file with established interrupts. */
export const pciuserIntrEvent = new Struct('pciuser_intr_event', { pie_vector: 'u32', pie_count: 'u32' });

export const pciuserDmamemAlloc = new Struct('pciuser_dmamem_alloc', {
  pdm_size: 'u64', pdm_align: 'u64', pdm_boundary: 'u64', pdm_maxaddr: 'u64',
  pdm_maxsegs: 'u32', pdm_flags: 'u32', pdm_id: 'u32', pdm_nsegs: 'u32', pdm_cookie: 'u64',
});

export const pciuserDmaId = new Struct('pciuser_dma_id', { pdi_id: 'u32', pdi_pad: 'u32' });

export const pciuserDmamapCreate = new Struct('pciuser_dmamap_create', {
  pdc_maxsize: 'u64', pdc_maxsegsz: 'u64', pdc_boundary: 'u64', pdc_maxaddr: 'u64',
  pdc_nsegments: 'u32', pdc_flags: 'u32', pdc_id: 'u32', pdc_pad: 'u32',
});

export const pciuserDmaSeg = new Struct('pciuser_dma_seg', { ds_addr: 'u64', ds_len: 'u64' });

export const pciuserDmamapLoad = new Struct('pciuser_dmamap_load', {
  pdl_map: 'u32', pdl_mem: 'u32', pdl_offset: 'u64', pdl_len: 'u64', pdl_segs: 'u64',
  pdl_maxsegs: 'u32', pdl_nsegs: 'u32', pdl_flags: 'u32', pdl_pad: 'u32',
});

export const pciuserDmamapSync = new Struct('pciuser_dmamap_sync', {
  pds_map: 'u32', pds_ops: 'u32', pds_offset: 'u64', pds_len: 'u64',
});

/** Every pciuserio.h struct above, for the layout test. */
export const pciuserStructs = [
  pciuserBar, pciuserClaim, pciuserCfgreg, pciuserPio, pciuserIntrSetup, pciuserIntrAck, pciuserIntrUnmask,
  pciuserIntrEvent, pciuserDmamemAlloc, pciuserDmaId, pciuserDmamapCreate, pciuserDmaSeg, pciuserDmamapLoad,
  pciuserDmamapSync,
];

/**
 * <dev/pci/pciio.h> struct pciio_businfo (two u_int): which bus a /dev/pciN
 * is, since N is the pci(4) unit number, not the bus number.
 */
export const pciioBusinfo = new Struct('pciio_businfo', { busno: 'u32', maxdevs: 'u32' });

export const ioctls = {
  PCIUSER_IOC_CLAIM: iowr('P', 64, pciuserClaim),
  PCIUSER_IOC_CFGREAD: iowr('P', 65, pciuserCfgreg),
  PCIUSER_IOC_CFGWRITE: iow('P', 66, pciuserCfgreg),
  PCIUSER_IOC_PIO_READ: iowr('P', 67, pciuserPio),
  PCIUSER_IOC_PIO_WRITE: iow('P', 68, pciuserPio),
  PCIUSER_IOC_INTR_ESTABLISH: iowr('P', 69, pciuserIntrSetup),
  PCIUSER_IOC_INTR_DISESTABLISH: io('P', 70),
  PCIUSER_IOC_INTR_SETACK: iow('P', 71, pciuserIntrAck),
  PCIUSER_IOC_INTR_UNMASK: iow('P', 72, pciuserIntrUnmask),
  PCIUSER_IOC_DMAMEM_ALLOC: iowr('P', 80, pciuserDmamemAlloc),
  PCIUSER_IOC_DMAMEM_FREE: iow('P', 81, pciuserDmaId),
  PCIUSER_IOC_DMAMAP_CREATE: iowr('P', 82, pciuserDmamapCreate),
  PCIUSER_IOC_DMAMAP_DESTROY: iow('P', 83, pciuserDmaId),
  PCIUSER_IOC_DMAMAP_LOAD: iowr('P', 84, pciuserDmamapLoad),
  PCIUSER_IOC_DMAMAP_UNLOAD: iow('P', 85, pciuserDmaId),
  PCIUSER_IOC_DMAMAP_SYNC: iow('P', 86, pciuserDmamapSync),
} as const;

/** pciio.h: _IOR('P', 4, struct pciio_businfo); kept apart from `ioctls`, which mirrors abi-probe.c. */
export const PCI_IOC_BUSINFO = ior('P', 4, pciioBusinfo);
