/**
 * virtio-net's receive queue (virtio 1.x §5.1.6.3): each receive buffer is
 * one device-writable descriptor holding the virtio_net_hdr and a whole
 * frame, from the kit's RxBuffers (a pool larger than the queue so a
 * consumer can hold frames while the queue stays full). A frame goes out
 * as its buffer's own RxFrame, a view past the header (no copy, no
 * allocation per frame); the queue is refilled in batches, one doorbell
 * per batch.
 */
import type { DmaTag } from '../../pci/bus-dma.js';
import { RxBuffers } from '../kit/rx-buffers.js';
import { ETHER_HEADER, MAX_FRAME, type DriverCounters, type RxFrame } from '../packet.js';
import type { SplitRing } from '../virtio/split-ring.js';

/** struct virtio_net_hdr with num_buffers: 12 bytes in front of every frame under VERSION_1 (§5.1.6). */
export const NET_HDR = 12;
/** Without MRG_RXBUF or receive offloads a buffer of header + 1514 is enough for any frame (§5.1.6.3.1). */
export const RX_BUFFER = NET_HDR + MAX_FRAME;

export class RxQueue {
  private readonly rxBuffers: RxBuffers;
  /** Per descriptor head in flight: the buffer it carries. */
  private readonly bufferOf: Int32Array;
  private readonly address = new Float64Array(1);
  private readonly length = Int32Array.of(RX_BUFFER);
  private sink: (frame: RxFrame) => void = () => {};

  constructor(private readonly ring: SplitRing, tag: DmaTag, readonly buffers: number) {
    this.rxBuffers = new RxBuffers(tag, buffers, RX_BUFFER, NET_HDR, this);
    this.bufferOf = new Int32Array(ring.size).fill(-1);
  }

  /** Fills the queue, counting into `counters` and delivering to `sink` from now on. */
  start(counters: DriverCounters['rx'], sink: (frame: RxFrame) => void): void {
    this.rxBuffers.start(counters);
    this.sink = sink;
    this.refill();
  }

  /** Buffers the consumer holds. */
  get held(): number {
    return this.rxBuffers.held(this.ring.inFlight);
  }

  /** Delivers every frame the device returned, then refills. Throws on a device fault or where the sink throws. */
  receive(): number {
    const n = this.ring.reap(this.onUsed);
    this.refill();
    return n;
  }

  /** One returned buffer: `written` is header + frame. Bound once: nothing is allocated per frame. */
  private readonly onUsed = (head: number, written: number): void => {
    const id = this.bufferOf[head]!;
    this.bufferOf[head] = -1;
    const length = written - NET_HDR;
    if (!(length >= ETHER_HEADER && length <= MAX_FRAME)) {
      // No offloads were negotiated, so the header carries nothing to act on; only the length can be wrong.
      this.rxBuffers.reject(id);
      return;
    }
    this.sink(this.rxBuffers.frame(id, length));
  };

  /** @internal PooledFrame.release */
  recycle(id: number): void {
    // At once only when the queue ran low; otherwise the next receive refills, with one doorbell.
    if (this.rxBuffers.recycle(id) && this.ring.inFlight < this.ring.size >> 1) this.refill();
  }

  private refill(): void {
    if (this.rxBuffers.fill(this.ring.free, this.post) > 0) this.ring.kick();
  }

  /** Puts a free buffer in the queue as one descriptor (bound once: a refill allocates nothing). */
  private readonly post = (id: number): void => {
    this.address[0] = this.rxBuffers.pool.busAddresses[id]!;
    this.bufferOf[this.ring.add(1, this.address, this.length, 0)] = id;
  };

  /**
   * The incarnation ends (the device reset already): frames the device had
   * returned and nobody saw are counted, frames still held become stale
   * (their release does nothing; the host frees the memory). Returns the count.
   */
  close(): number {
    this.rxBuffers.close();
    let lost = 0;
    try {
      lost = this.ring.reap(() => {});
    } catch {
      // A device that returned what was not in flight: nothing it returned is trusted, so none is counted.
    }
    return lost;
  }
}
