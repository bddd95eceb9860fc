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
import { PooledFrame, type DriverCounters, type RxFrame } from '../packet.js';
import { DESC_WORDS, REG, RX_BUFFER_BYTES, RXD } from './registers.js';
import { E1000eRing } from './ring.js';

export class RxRing extends E1000eRing<DriverCounters['rx']> {
  private readonly pool: DmaPool;
  private readonly frames: PooledFrame[] = [];
  private live = true;

  constructor(regs: BusSpace, tag: DmaTag, size: number, poolSize: number) {
    super(regs, tag, size, REG.RDBAL);
    this.pool = tag.createPool({ entrySize: RX_BUFFER_BYTES, entries: poolSize });
    for (let i = 0; i < poolSize; i++) {
      this.frames.push(new PooledFrame(new Uint8Array(this.pool.buffer, this.pool.offsetOf(i), RX_BUFFER_BYTES), this, i));
    }
  }

  /** Programs the ring registers and fills it (RCTL.EN is set by the caller afterwards), counting into `counters` from now on. */
  override start(counters: DriverCounters['rx']): void {
    super.start(counters);
    this.refill();
  }

  /** Buffers the consumer holds. */
  get held(): number {
    return this.pool.entries - this.pool.available - this.ring.count;
  }

  /** Frames the device wrote that nobody will see (at a stop or crash: counted as lost by the caller). */
  pendingCompleted(): number {
    let n = 0;
    while (this.done(n)) n++;
    return n;
  }

  /**
   * Hands every completed frame to `deliver`, up to `budget`, then refills
   * the ring. Returns the number delivered.
   */
  poll(deliver: (frame: RxFrame) => void, budget: number): number {
    this.ring.pool.sync(DmaSync.POSTREAD, 0);
    let n = 0;
    while (n < budget && this.done()) {
      const w = this.ring.headSlot * DESC_WORDS;
      const status = this.ring.words[w + 3]!;
      const length = this.ring.words[w + 2]! & 0xffff;
      const id = this.shift();
      if ((status & 0xff00) !== 0 || (status & RXD.STAT_EOP) === 0) {
        // An error byte (bits 8..15), or a frame spread over several buffers.
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
    let added = 0;
    while (this.ring.count < this.size - 1) {
      const id = this.pool.alloc();
      if (id < 0) {
        // Every buffer is out with the consumer: the ring runs dry and the device drops (an overrun).
        this.counters.noBuffer++;
        break;
      }
      this.pool.sync(DmaSync.PREREAD, id);
      this.push(this.pool, id, 0);
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
