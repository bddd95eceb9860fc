/**
 * The receive ring: legacy descriptors over one DMA area, buffers from the
 * kit's RxBuffers (a pool larger than the ring, one preallocated RxFrame
 * per buffer: no allocation per packet). release() gives the buffer back;
 * the ring is refilled from the pool. It counts into the port's shared
 * counters (given at start).
 */
import { DmaSync, type DmaTag } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import { RxBuffers } from '../kit/rx-buffers.js';
import type { DriverCounters, RxFrame } from '../packet.js';
import { DESC_WORDS, REG, RX_BUFFER_BYTES, RXD } from './registers.js';
import { E1000eRing } from './ring.js';

export class RxRing extends E1000eRing {
  private readonly buffers: RxBuffers;

  constructor(regs: BusSpace, tag: DmaTag, size: number, poolSize: number) {
    super(regs, tag, size, REG.RDBAL);
    this.buffers = new RxBuffers(tag, poolSize, RX_BUFFER_BYTES, 0, this);
  }

  /** Programs the ring registers and fills it (RCTL.EN is set by the caller afterwards), counting into `counters` from now on. */
  start(counters: DriverCounters['rx']): void {
    this.program();
    this.buffers.start(counters);
    this.refill();
  }

  /** Buffers the consumer holds. */
  get held(): number {
    return this.buffers.held(this.ring.count);
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
        this.buffers.reject(id);
        continue;
      }
      n++;
      deliver(this.buffers.frame(id, length));
    }
    this.refill();
    return n;
  }

  /** @internal PooledFrame.release */
  recycle(id: number): void {
    // Refill at once only when the ring ran low; otherwise the next poll does it, in one RDT write.
    if (this.buffers.recycle(id) && this.ring.count < this.size >> 1) this.refill();
  }

  private refill(): void {
    if (this.buffers.fill(this.size - 1 - this.ring.count, this.post) === 0) return;
    this.ring.pool.sync(DmaSync.PREWRITE | DmaSync.PREREAD, 0);
    this.ring.ringTail();
  }

  /** Puts a free buffer in the descriptor at the tail (bound once: a refill allocates nothing). */
  private readonly post = (id: number): void => this.push(this.buffers.pool, id, 0);

  /** The incarnation ends: frames still held become stale (their release does nothing; the host frees the memory). */
  close(): void {
    this.buffers.close();
  }
}
