/**
 * QEMU's `edu` teaching device (1234:11e8), its BAR0 registers as QEMU's
 * docs/specs/edu.rst describes them: the one register map the edu driver,
 * the VM tests, the benchmarks and the demo share.
 */
export const EDU = {
  ID: 0x00,
  /** Reads back the bitwise inverse of what was written. */
  LIVENESS: 0x04,
  FACTORIAL: 0x08,
  STATUS: 0x20,
  STATUS_COMPUTING: 0x01,
  /** Raise an interrupt when a factorial is done. */
  STATUS_IRQ_ON_FACTORIAL: 0x80,
  IRQ_STATUS: 0x24,
  /** IRQ_STATUS bits: a factorial finished; a DMA finished. */
  IRQ_STATUS_FACTORIAL_DONE: 0x1,
  IRQ_STATUS_DMA_DONE: 0x100,
  IRQ_RAISE: 0x60,
  IRQ_ACK: 0x64,
  DMA_SRC: 0x80,
  DMA_DST: 0x88,
  DMA_COUNT: 0x90,
  DMA_CMD: 0x98,
  DMA_RUN: 0x1,
  DMA_TO_RAM: 0x2,
  DMA_IRQ: 0x4,
  /** The identification register's value. */
  ID_VALUE: 0x010000ed,
  /** edu's internal buffer in its DMA address space, 4 KiB. */
  BUFFER: 0x40000n,
  /** edu masks DMA addresses to 28 bits. */
  DMA_LIMIT: (1n << 28n) - 1n,
} as const;
