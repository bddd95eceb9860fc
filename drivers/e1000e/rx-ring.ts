/**
 * The receive ring: legacy descriptors over one DMA area, buffers from a
 * pool larger than the ring so a consumer can hold frames while the ring
 * stays full. A received frame is handed out as the buffer's own RxFrame
 * (preallocated, one per buffer): no allocation per packet. release() gives
 * the buffer back to the pool; the ring is refilled from it. It counts into
 * the port's shared counters (given at start).
 */
import { DmaSync, type DmaTag } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import { storeBus64 } from '../kit/bus-address.js';
import type { DescriptorRing } from '../kit/ring.js';
import { PooledFrame, type DriverCounters, type RxFrame } from '../packet.js';
import { descriptorRing, programRing } from './buffers.js';
import { REG, RX_BUFFER_BYTES, RXD } from './registers.js';

export class RxRing {
  /** Head: the next descriptor the device will complete; tail (RDT): the next the driver fills; between them, the filled ones. */
  private readonly ring: DescriptorRing;
  private readonly pool: DmaPool;
  private readonly frames: PooledFrame[] = [];
  private readonly slotBuffer: Int32Array;
  private live = true;
  private counters!: DriverCounters['rx'];

  constructor(private readonly regs: BusSpace, tag: DmaTag, readonly size: number, poolSize: number) {
    this.ring = descriptorRing(regs, tag, size, REG.RDBAL);
    this.pool = tag.createPool({ entrySize: RX_BUFFER_BYTES, entries: poolSize });
    this.slotBuffer = new Int32Array(size).fill(-1);
    for (let i = 0; i < poolSize; i++) {
      this.frames.push(new PooledFrame(new Uint8Array(this.pool.buffer, this.pool.offsetOf(i), RX_BUFFER_BYTES), this, i));
    }
  }

  /** Programs the ring registers and fills it (RCTL.EN is set by the caller afterwards), counting into `counters` from now on. */
  start(counters: DriverCounters['rx']): void {
    this.counters = counters;
    programRing(this.regs, REG.RDBAL, this.ring);
    this.refill();
  }

  /** Buffers the consumer holds. */
  get held(): number {
    return this.pool.entries - this.pool.available - this.ring.count;
  }

  /** Frames the device wrote that nobody will see (at a stop or crash: counted as lost by the caller). */
  pendingCompleted(): number {
    let n = 0;
    while (n < this.ring.count && (this.ring.words[((this.ring.headSlot + n) % this.size) * 4 + 3]! & RXD.STAT_DD) !== 0) n++;
    return n;
  }

  /**
   * Hands every completed frame to `deliver`, up to `budget`, then refills
   * the ring. Returns the number delivered.
   */
  poll(deliver: (frame: RxFrame) => void, budget: number): number {
    const d = this.ring.words;
    this.ring.pool.sync(DmaSync.POSTREAD, 0);
    let n = 0;
    while (n < budget && this.ring.count > 0) {
      const w = this.ring.headSlot * 4;
      const status = d[w + 3]!;
      if ((status & RXD.STAT_DD) === 0) break;
      const slot = this.ring.shift();
      const id = this.slotBuffer[slot]!;
      const length = d[w + 2]! & 0xffff;
      const errors = (status >>> 8) & 0xff;
      d[w + 3] = 0;
      this.slotBuffer[slot] = -1;
      if (errors !== 0 || (status & RXD.STAT_EOP) === 0) {
        this.counters.errors++;
        this.pool.release(id);
        continue;
      }
      this.pool.sync(DmaSync.POSTREAD, id, 0, length);
      const frame = this.frames[id]!;
      frame.length = length;
      frame.held = true;
      this.counters.frames++;
      this.counters.bytes += length;
      n++;
      deliver(frame);
    }
    this.refill();
    return n;
  }

  /** @internal PooledFrame.release */
  recycle(id: number): void {
    if (!this.live) return;
    this.pool.release(id);
    // Refill at once only when the ring ran low; otherwise the next poll does it, in one RDT write.
    if (this.ring.count < this.size >> 1) this.refill();
  }

  private refill(): void {
    if (!this.live) return;
    const d = this.ring.words;
    let added = 0;
    while (this.ring.count < this.size - 1) {
      const id = this.pool.alloc();
      if (id < 0) {
        // Every buffer is out with the consumer: the ring runs dry and the device drops (an overrun).
        this.counters.noBuffer++;
        break;
      }
      const slot = this.ring.push();
      this.pool.sync(DmaSync.PREREAD, id);
      storeBus64(d, slot * 4, this.pool.busAddresses, id);
      d[slot * 4 + 2] = 0;
      d[slot * 4 + 3] = 0;
      this.slotBuffer[slot] = id;
      added++;
    }
    if (added === 0) return;
    this.ring.pool.sync(DmaSync.PREWRITE | DmaSync.PREREAD, 0);
    this.ring.ringTail();
  }

  /** The incarnation ends: frames still held become stale (their release does nothing; the host frees the memory). */
  close(): void {
    this.live = false;
    for (const f of this.frames) f.held = false;
  }
}
