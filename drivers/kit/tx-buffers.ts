/**
 * A NIC's transmit buffers: one DMA pool the port's consumer fills
 * (PacketBinding.transmitBuffers), fewer than the ring can hold so posting
 * one never finds it full. The ring checks and syncs a buffer with
 * prepare(), counts it with posted() once it is in a descriptor, and rings
 * its doorbell when flush() says something was posted since the last.
 * e1000e's transmit ring and virtio-net's transmit queue are built on it.
 */
import { DmaSync, type DmaTag } from '../../pci/bus-dma.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import type { DriverCounters, TransmitBuffers } from '../packet.js';

export class TxBuffers {
  readonly pool: DmaPool;
  readonly transmitBuffers: TransmitBuffers;
  private counters!: DriverCounters['tx'];
  private unflushed = false;

  /** `entries` buffers of `entrySize` bytes; `driver` names the driver in a refused post's error. */
  constructor(tag: DmaTag, entries: number, private readonly entrySize: number, private readonly driver: string) {
    this.pool = tag.createPool({ entrySize, entries, access: 'read' });
    this.transmitBuffers = { buffer: this.pool.buffer, stride: this.pool.stride, entries: this.pool.entries };
  }

  start(counters: DriverCounters['tx']): void {
    this.counters = counters;
  }

  /** Buffer `index`, a frame of `length` bytes, synced for the device; returns its bus address. Throws where there is no such buffer or length. */
  prepare(index: number, length: number): number {
    if (!(index >= 0 && index < this.pool.entries && length > 0 && length <= this.entrySize)) {
      throw new Error(`${this.driver}: transmit of buffer ${index}, ${length} bytes: no such buffer or length (${this.pool.entries} buffers of ${this.entrySize})`);
    }
    this.pool.sync(DmaSync.PREWRITE, index, 0, length);
    return this.pool.busAddresses[index]!;
  }

  /** A prepared frame of `length` bytes is in the ring: counted, and due at the next flush. */
  posted(length: number): void {
    this.counters.frames++;
    this.counters.bytes += length;
    this.unflushed = true;
  }

  /** Whether anything was posted since the last flush: if so the caller rings the doorbell, once for all of it. */
  flush(): boolean {
    if (!this.unflushed) return false;
    this.unflushed = false;
    return true;
  }
}
