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
import { programRing, ringPool, writeAddress } from './buffers.js';
import { DESC_BYTES, REG, RX_BUFFER_BYTES, RXD } from './registers.js';

export class RxRing {
  private readonly desc: Uint32Array;
  private readonly ring: DmaPool;
  private readonly pool: DmaPool;
  private readonly frames: PooledFrame[] = [];
  private readonly slotBuffer: Int32Array;
  /** Next descriptor the device will complete. */
  private next = 0;
  /** RDT: the next descriptor the driver fills. */
  private tail = 0;
  private filled = 0;
  private live = true;
  private counters!: DriverCounters['rx'];

  constructor(private readonly regs: BusSpace, tag: DmaTag, readonly size: number, poolSize: number) {
    this.ring = ringPool(tag, size, DESC_BYTES);
    this.pool = tag.createPool({ entrySize: RX_BUFFER_BYTES, entries: poolSize });
    this.desc = new Uint32Array(this.ring.buffer, 0, size * 4);
    this.slotBuffer = new Int32Array(size).fill(-1);
    for (let i = 0; i < poolSize; i++) {
      this.frames.push(new PooledFrame(new Uint8Array(this.pool.buffer, this.pool.offsetOf(i), RX_BUFFER_BYTES), this, i));
    }
  }

  /** Programs the ring registers and fills it (RCTL.EN is set by the caller afterwards), counting into `counters` from now on. */
  start(counters: DriverCounters['rx']): void {
    this.counters = counters;
    programRing(this.regs, REG.RDBAL, this.ring, this.size * DESC_BYTES);
    this.refill();
  }

  /** Buffers the consumer holds. */
  get held(): number {
    return this.pool.entries - this.pool.available - this.filled;
  }

  /** Frames the device wrote that nobody will see (at a stop or crash: counted as lost by the caller). */
  pendingCompleted(): number {
    let n = 0;
    for (let i = this.next, k = 0; k < this.filled && (this.desc[i * 4 + 3]! & RXD.STAT_DD) !== 0; i = (i + 1) % this.size, k++) n++;
    return n;
  }

  /**
   * Hands every completed frame to `deliver`, up to `budget`, then refills
   * the ring. Returns the number delivered.
   */
  poll(deliver: (frame: RxFrame) => void, budget: number): number {
    const d = this.desc;
    this.ring.sync(DmaSync.POSTREAD, 0);
    let n = 0;
    while (n < budget && this.filled > 0) {
      const w = this.next * 4;
      const status = d[w + 3]!;
      if ((status & RXD.STAT_DD) === 0) break;
      const id = this.slotBuffer[this.next]!;
      const length = d[w + 2]! & 0xffff;
      const errors = (status >>> 8) & 0xff;
      d[w + 3] = 0;
      this.slotBuffer[this.next] = -1;
      this.next = (this.next + 1) % this.size;
      this.filled--;
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
    if (this.filled < this.size >> 1) this.refill();
  }

  private refill(): void {
    if (!this.live) return;
    const d = this.desc;
    let added = 0;
    while (this.filled < this.size - 1) {
      const id = this.pool.alloc();
      if (id < 0) {
        // Every buffer is out with the consumer: the ring runs dry and the device drops (an overrun).
        this.counters.noBuffer++;
        break;
      }
      const w = this.tail * 4;
      this.pool.sync(DmaSync.PREREAD, id);
      writeAddress(d, w, this.pool.busAddresses[id]!);
      d[w + 2] = 0;
      d[w + 3] = 0;
      this.slotBuffer[this.tail] = id;
      this.tail = (this.tail + 1) % this.size;
      this.filled++;
      added++;
    }
    if (added === 0) return;
    this.ring.sync(DmaSync.PREWRITE | DmaSync.PREREAD, 0);
    this.regs.write4(REG.RDT, this.tail);
  }

  /** The incarnation ends: frames still held become stale (their release does nothing; the host frees the memory). */
  close(): void {
    this.live = false;
    for (const f of this.frames) f.held = false;
  }
}
