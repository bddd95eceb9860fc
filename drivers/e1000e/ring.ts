/**
 * What the receive and transmit rings share: legacy descriptors in a kit
 * DescriptorRing, the same register block, and the packet buffer each
 * descriptor carries, from a DmaPool (pci/dma-pool.ts: one allocation,
 * each entry's bus address computed once, nothing allocated or mapped per packet).
 */
import type { DmaTag, DriverDma } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import { storeBus64, writeRegister64 } from '../kit/bus-address.js';
import { DescriptorRing } from '../kit/ring.js';
import { DESC_WORDS, RING_ALIGN, STAT_DD } from './registers.js';

/** 64-bit addresses; rings need 128-byte alignment (RDBAL/TDBAL's low 7 bits are zero), buffers get it too. */
export function e1000eTag(dma: DriverDma): DmaTag {
  return dma.createTag({ alignment: RING_ALIGN });
}

/**
 * A ring whose registers start at `bal`: receive (RDBAL 0x2800) and
 * transmit (TDBAL 0x3800) rings have the same layout: BAL, BAH, LEN at
 * +0, +4, +8, head at +0x10, tail (the doorbell) at +0x18. The ring's
 * head is the next descriptor the device completes, its tail the next
 * the driver fills.
 */
export abstract class E1000eRing {
  protected readonly ring: DescriptorRing;
  /** The buffer each descriptor between head and tail carries. */
  private readonly slotBuffer: Int32Array;

  constructor(protected readonly regs: BusSpace, tag: DmaTag, readonly size: number, private readonly bal: number) {
    this.ring = new DescriptorRing(tag, size, DESC_WORDS * 4, undefined, size, { space: regs, offset: bal + 0x18 });
    this.slotBuffer = new Int32Array(size).fill(-1);
  }

  /** Programs the ring's registers, empty (head = tail = 0). */
  protected program(): void {
    writeRegister64(this.regs, this.bal, this.ring.bus);
    this.regs.write4(this.bal + 0x08, this.ring.bytes);
    this.regs.write4(this.bal + 0x10, 0);
    this.regs.write4(this.bal + 0x18, 0);
  }

  /** Whether the device wrote back the descriptor `ahead` places past the head (DD; none past the tail). */
  protected done(ahead = 0): boolean {
    return ahead < this.ring.count && (this.ring.words[((this.ring.headSlot + ahead) % this.size) * DESC_WORDS + 3]! & STAT_DD) !== 0;
  }

  /** Puts buffer `id` of `pool` in the descriptor at the tail, with word 2 (a transmit's length and command, 0 to receive). */
  protected push(pool: DmaPool, id: number, word2: number): void {
    const slot = this.ring.push();
    const w = slot * DESC_WORDS;
    storeBus64(this.ring.words, w, pool.busAddresses, id);
    this.ring.words[w + 2] = word2;
    this.ring.words[w + 3] = 0;
    this.slotBuffer[slot] = id;
  }

  /** Takes the descriptor at the head (one done()): its status cleared, the buffer it carried returned. */
  protected shift(): number {
    const slot = this.ring.shift();
    this.ring.words[slot * DESC_WORDS + 3] = 0;
    return this.slotBuffer[slot]!;
  }
}
