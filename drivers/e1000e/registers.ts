/**
 * Intel 82574L registers and bits (datasheet 317694, chapter 10), the ones
 * this driver uses. QEMU's `e1000e` device emulates this controller; where
 * QEMU 7.2 differs from the datasheet the user of a register says so.
 */
export const REG = {
  CTRL: 0x0000,
  STATUS: 0x0008,
  EERD: 0x0014,
  CTRL_EXT: 0x0018,
  MDIC: 0x0020,
  ICR: 0x00c0,
  ITR: 0x00c4,
  ICS: 0x00c8,
  IMS: 0x00d0,
  IMC: 0x00d8,
  EIAC: 0x00dc,
  IVAR: 0x00e4,
  /** EITR_82574(n): one throttle register per MSI-X vector. */
  EITR0: 0x00e8,
  RCTL: 0x0100,
  TCTL: 0x0400,
  RDBAL: 0x2800,
  RDTR: 0x2820,
  RADV: 0x282c,
  TDBAL: 0x3800,
  TDH: 0x3810,
  TIDV: 0x3820,
  TADV: 0x382c,
  RFCTL: 0x5008,
  MTA: 0x5200,
  RAL0: 0x5400,
  RAH0: 0x5404,
} as const;

export const CTRL = { SLU: 1 << 6, FRCSPD: 1 << 11, FRCDPX: 1 << 12, RST: 1 << 26 } as const;
export const STATUS = { FD: 1 << 0, LU: 1 << 1, SPEED_SHIFT: 6, SPEED_MASK: 3 << 6 } as const;
export const EERD = { START: 1 << 0, DONE: 1 << 1, ADDR_SHIFT: 2, DATA_SHIFT: 16 } as const;
export const CTRL_EXT = { IAME: 1 << 27, PBA_CLR: 1 << 31 } as const;

export const MDIC = {
  REG_SHIFT: 16, PHY_SHIFT: 21, OP_WRITE: 1 << 26, OP_READ: 2 << 26,
  READY: 1 << 28, ERROR: 1 << 30,
  /** The 82574's internal PHY answers at address 1. */
  PHY_ADDRESS: 1,
} as const;

/** PHY registers (IEEE 802.3 clause 22). */
export const PHY = { STATUS: 1, ID1: 2, ID2: 3, STATUS_LINK: 1 << 2, STATUS_AUTONEG_DONE: 1 << 5 } as const;

/** ICR/IMS/ICS/IMC bits. RXQ0, TXQ0 and OTHER are the 82574's MSI-X causes. */
export const INT = {
  TXDW: 1 << 0,
  LSC: 1 << 2,
  RXDMT0: 1 << 4,
  RXO: 1 << 6,
  RXT0: 1 << 7,
  RXQ0: 1 << 20,
  RXQ1: 1 << 21,
  TXQ0: 1 << 22,
  OTHER: 1 << 24,
  ALL: 0xffffffff,
} as const;

/** IVAR: a 4-bit entry (3-bit vector, valid bit) per cause. */
export const IVAR = { VALID: 0x8, RXQ0_SHIFT: 0, RXQ1_SHIFT: 4, TXQ0_SHIFT: 8, OTHER_SHIFT: 16 } as const;

export const RCTL = {
  EN: 1 << 1, UPE: 1 << 3, MPE: 1 << 4, BAM: 1 << 15,
  /** BSIZE 00 with BSEX 0: 2048-byte buffers. */
  BSIZE_2048: 0,
  SECRC: 1 << 26,
} as const;

export const TCTL = { EN: 1 << 1, PSP: 1 << 3, CT_SHIFT: 4, COLD_SHIFT: 12 } as const;

/** RFCTL.ACK_DIS (bit 12): no ACK-detection cause (QEMU would route every received TCP ACK to the "other" vector). */
export const RFCTL = { ACK_DIS: 1 << 12 } as const;

export const RAH = { AV: 1 << 31 } as const;

/** Legacy descriptors (16 bytes), as 32-bit words: [address lo, address hi, word 2, word 3]. */
export const DESC_WORDS = 4;
/** Word 3's DD bit (descriptor done): the same in receive and transmit descriptors. */
export const STAT_DD = 1 << 0;
export const RXD = { STAT_EOP: 1 << 1 } as const;
/** Word 2's command byte (bits 24..31): end of packet, insert FCS, report status. */
export const TXD = { CMD_EOP: 1 << 24, CMD_IFCS: 1 << 25, CMD_RS: 1 << 27 } as const;

/**
 * The statistics registers this driver reads, by the port counter each
 * adds to (PacketBinding.hardwareCounters, in this order). They clear on
 * read; the octet counts are 64-bit pairs (QEMU clears a pair when its
 * high half is read).
 */
export const STATS = {
  goodPacketsReceived: 0x4074, // GPRC
  goodPacketsTransmitted: 0x4080, // GPTC
  goodOctetsReceived: 0x4088, // GORCL, GORCH
  goodOctetsTransmitted: 0x4090, // GOTCL, GOTCH
  totalPacketsReceived: 0x40d0, // TPR
  totalPacketsTransmitted: 0x40d4, // TPT
  broadcastReceived: 0x4078, // BPRC
  multicastReceived: 0x407c, // MPRC
  broadcastTransmitted: 0x40f4, // BPTC
  multicastTransmitted: 0x40f0, // MPTC
  /** RUC: frames shorter than 64 bytes with the FCS (padded by the device). */
  undersizeReceived: 0x40a4,
  /** ROC: frames longer than the maximum (dropped). */
  oversizeReceived: 0x40ac,
} as const;
export const STATS_64 = [STATS.goodOctetsReceived, STATS.goodOctetsTransmitted] as readonly number[];

/** Descriptor ring length: RDLEN/TDLEN must be a multiple of 128 bytes (8 descriptors). */
export const RING_ALIGN = 128;
/** The receive buffer size RCTL.BSIZE_2048 selects. */
export const RX_BUFFER_BYTES = 2048;
