/**
 * virtio-net's transmit queue: each frame is a chain of two device-readable
 * descriptors, the virtio_net_hdr and the frame (VERSION_1 lets them be
 * separate, §5.1.6.2), so the consumer fills its transmit buffers from
 * their first byte (the kit's TxBuffers). No offload is asked,
 * so every chain points at one zeroed header. Completed chains give their
 * buffers back.
 */
import { DmaSync, type DmaTag } from '../../pci/bus-dma.js';
import { TxBuffers } from '../kit/tx-buffers.js';
import type { DriverCounters } from '../packet.js';
import type { SplitRing } from '../virtio/split-ring.js';
import { NET_HDR } from './rx-queue.js';

const TX_BUFFER = 2048;

export class TxQueue {
  private readonly buffers: TxBuffers;
  /** Per descriptor head in flight: the buffer it carries. */
  private readonly bufferOf: Int32Array;
  private readonly addresses = new Float64Array(2);
  private readonly lengths = new Int32Array(2);
  private done: (buffer: number) => void = () => {};

  constructor(private readonly ring: SplitRing, tag: DmaTag) {
    // flags 0, gso_type NONE: the device neither checksums nor segments.
    const header = tag.createPool({ entrySize: NET_HDR, entries: 1, access: 'read' });
    new Uint8Array(header.buffer, header.offsetOf(0), NET_HDR).fill(0);
    header.sync(DmaSync.PREWRITE, 0);
    this.addresses[0] = header.busAddresses[0]!;
    this.lengths[0] = NET_HDR;
    // Two descriptors a frame: a buffer for each chain the queue can hold, so posting one never finds it full.
    this.buffers = new TxBuffers(tag, ring.size >> 1, TX_BUFFER, 'virtio-net');
    this.bufferOf = new Int32Array(ring.size).fill(-1);
  }

  get transmitBuffers() {
    return this.buffers.transmitBuffers;
  }

  /** Counts into `counters`, and hands each buffer the device is done with to `done`, from now on. */
  start(counters: DriverCounters['tx'], done: (buffer: number) => void): void {
    this.buffers.start(counters);
    this.done = done;
  }

  /** Chains the device has not returned. */
  get inFlight(): number {
    return this.ring.inFlight;
  }

  /** Puts buffer `index` (a frame of `length` bytes, padded by the consumer) in the queue; the device is told at flush(). */
  post(index: number, length: number): void {
    this.addresses[1] = this.buffers.prepare(index, length);
    this.lengths[1] = length;
    const head = this.ring.add(2, this.addresses, this.lengths, 2);
    // Never: there are half as many buffers as descriptors, and a buffer is in one chain at most.
    if (head < 0) throw new Error('virtio-net: the transmit queue is full');
    this.bufferOf[head] = index;
    this.buffers.posted(length);
  }

  /** One doorbell for everything posted since the last. */
  flush(): void {
    if (this.buffers.flush()) this.ring.kick();
  }

  /** Gives back the buffer of every chain the device returned; how many. Throws on a device fault. */
  reclaim(): number {
    return this.ring.reap(this.onUsed);
  }

  private readonly onUsed = (head: number): void => {
    const index = this.bufferOf[head]!;
    this.bufferOf[head] = -1;
    this.done(index);
  };

  /** The incarnation ends (the device reset already): chains it never returned are lost; how many. */
  close(): number {
    try {
      this.ring.reap(() => {});
    } catch {
      // A device that returned what was not in flight: every chain counts as lost.
    }
    return this.ring.inFlight;
  }
}
