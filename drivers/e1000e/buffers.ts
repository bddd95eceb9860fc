/**
 * The e1000e's DMA memory: descriptor rings (kit DescriptorRings) and
 * packet buffers in DmaPools (pci/dma-pool.ts: one allocation, each
 * entry's bus address computed once, nothing allocated or mapped per packet).
 */
import type { DmaTag, DriverDma } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import { writeRegister64 } from '../kit/bus-address.js';
import { DescriptorRing } from '../kit/ring.js';
import { DESC_BYTES, RING_ALIGN } from './registers.js';

/** 64-bit addresses; rings need 128-byte alignment (RDBAL/TDBAL's low 7 bits are zero), buffers get it too. */
export function e1000eTag(dma: DriverDma): DmaTag {
  return dma.createTag({ alignment: RING_ALIGN });
}

/**
 * A descriptor ring whose registers start at `bal`: receive (RDBAL 0x2800)
 * and transmit (TDBAL 0x3800) rings have the same layout: BAL, BAH, LEN at
 * +0, +4, +8, head at +0x10, tail (the doorbell) at +0x18.
 */
export function descriptorRing(regs: BusSpace, tag: DmaTag, size: number, bal: number): DescriptorRing {
  return new DescriptorRing(tag, size, DESC_BYTES, undefined, size, { space: regs, offset: bal + 0x18 });
}

/** Programs the ring's registers, empty (head = tail = 0). */
export function programRing(regs: BusSpace, bal: number, ring: DescriptorRing): void {
  writeRegister64(regs, bal, ring.bus);
  regs.write4(bal + 0x08, ring.bytes);
  regs.write4(bal + 0x10, 0);
  regs.write4(bal + 0x18, 0);
}
