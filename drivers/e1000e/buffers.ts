/**
 * The e1000e's DMA memory: descriptor rings and packet buffers are DmaPools
 * (pci/dma-pool.ts: one allocation, each entry's bus address computed once,
 * nothing allocated or mapped per packet).
 */
import type { DmaTag, DriverDma } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import { RING_ALIGN } from './registers.js';

/** 64-bit addresses; rings need 128-byte alignment (RDBAL/TDBAL's low 7 bits are zero), buffers get it too. */
export function e1000eTag(dma: DriverDma): DmaTag {
  return dma.createTag({ alignment: RING_ALIGN });
}

/** A descriptor ring: one pool entry of `descriptors` x 16 bytes. */
export function ringPool(tag: DmaTag, descriptors: number, bytesPerDescriptor: number): DmaPool {
  return tag.createPool({ entrySize: descriptors * bytesPerDescriptor, entries: 1 });
}

/** Writes a bus address into a descriptor's first two 32-bit words. */
export function writeAddress(words: Uint32Array, at: number, bus: number): void {
  words[at] = bus >>> 0;
  words[at + 1] = Math.floor(bus / 0x1_0000_0000);
}

/**
 * Programs a descriptor ring's registers, empty (head = tail = 0). Receive
 * (RDBAL 0x2800) and transmit (TDBAL 0x3800) rings have the same layout:
 * BAL, BAH, LEN at +0, +4, +8, head at +0x10, tail at +0x18.
 */
export function programRing(regs: BusSpace, bal: number, ring: DmaPool, bytes: number): void {
  const base = ring.busAddresses[0]!;
  regs.write4(bal, base >>> 0);
  regs.write4(bal + 0x04, Math.floor(base / 0x1_0000_0000));
  regs.write4(bal + 0x08, bytes);
  regs.write4(bal + 0x10, 0);
  regs.write4(bal + 0x18, 0);
}
