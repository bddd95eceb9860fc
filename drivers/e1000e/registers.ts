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
  IAM: 0x00e0,
  IVAR: 0x00e4,
  /** EITR_82574(n): one throttle register per MSI-X vector. */
  EITR0: 0x00e8,
  RCTL: 0x0100,
  TCTL: 0x0400,
  RDBAL: 0x2800,
  RDT: 0x2818,
  RDTR: 0x2820,
  RADV: 0x282c,
  TDBAL: 0x3800,
  TDH: 0x3810,
  TDT: 0x3818,
  TIDV: 0x3820,
  TADV: 0x382c,
  RXCSUM: 0x5000,
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

/** IVAR: a 4-bit entry (3-bit vector, valid bit) per cause; bit 31 asks for a TX interrupt at every write-back. */
export const IVAR = { VALID: 0x8, RXQ0_SHIFT: 0, RXQ1_SHIFT: 4, TXQ0_SHIFT: 8, OTHER_SHIFT: 16, TX_EVERY_WB: 1 << 31 } as const;

export const RCTL = {
  EN: 1 << 1, SBP: 1 << 2, UPE: 1 << 3, MPE: 1 << 4, LPE: 1 << 5, BAM: 1 << 15,
  /** BSIZE 00 with BSEX 0: 2048-byte buffers. */
  BSIZE_2048: 0,
  SECRC: 1 << 26,
} as const;

export const TCTL = { EN: 1 << 1, PSP: 1 << 3, CT_SHIFT: 4, COLD_SHIFT: 12 } as const;

/** RFCTL.ACK_DIS (bit 12): no ACK-detection cause (QEMU would route every received TCP ACK to the "other" vector). */
export const RFCTL = { ACK_DIS: 1 << 12 } as const;

export const RAH = { AV: 1 << 31 } as const;

/** Legacy descriptors (16 bytes), as 32-bit words: [address lo, address hi, word 2, word 3]. */
export const RXD = { STAT_DD: 1 << 0, STAT_EOP: 1 << 1 } as const;
export const TXD = {
  /** Word 2 command byte (bits 24..31): end of packet, insert FCS, report status. */
  CMD_EOP: 1 << 24, CMD_IFCS: 1 << 25, CMD_RS: 1 << 27,
  /** Word 3 status nibble. */
  STAT_DD: 1 << 0,
} as const;

/** Statistics (clear on read; QEMU clears a 64-bit pair when its high half is read). */
export const STATS = {
  CRCERRS: 0x4000,
  RUC: 0x40a4,
  ROC: 0x40ac,
  GPRC: 0x4074,
  BPRC: 0x4078,
  MPRC: 0x407c,
  GPTC: 0x4080,
  GORCL: 0x4088,
  GOTCL: 0x4090,
  TPR: 0x40d0,
  TPT: 0x40d4,
  MPTC: 0x40f0,
  BPTC: 0x40f4,
} as const;

/** Descriptor ring length: RDLEN/TDLEN must be a multiple of 128 bytes (8 descriptors). */
export const DESC_BYTES = 16;
export const RING_ALIGN = 128;
/** The receive buffer size RCTL.BSIZE_2048 selects. */
export const RX_BUFFER_BYTES = 2048;
