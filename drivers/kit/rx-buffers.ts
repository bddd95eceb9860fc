/**
 * A NIC's receive buffers: one DMA pool larger than the ring, so a consumer
 * can hold frames while the ring stays full, and one preallocated
 * PooledFrame per buffer, handed out as the frame (no copy, no allocation
 * per packet). The ring posts what fill() gives it and hands completed
 * buffers to frame() or reject(); a frame's release() comes back through
 * the ring's recycle(id) to recycle() here. Counts into the port's receive
 * counters (given at start). e1000e's receive ring and virtio-net's
 * receive queue are built on it.
 */
import { DmaSync, type DmaTag } from '../../pci/bus-dma.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import { PooledFrame, type DriverCounters, type RxFrame } from '../packet.js';

export class RxBuffers {
  readonly pool: DmaPool;
  private readonly frames: PooledFrame[] = [];
  private live = true;
  private counters!: DriverCounters['rx'];

  /** `entries` buffers of `entrySize` bytes, each frame `frameOffset` bytes in (past a device header); `owner.recycle` gets a released frame's id. */
  constructor(tag: DmaTag, entries: number, entrySize: number, private readonly frameOffset: number, owner: { recycle(id: number): void }) {
    this.pool = tag.createPool({ entrySize, entries });
    for (let i = 0; i < entries; i++) {
      this.frames.push(new PooledFrame(new Uint8Array(this.pool.buffer, this.pool.offsetOf(i) + frameOffset, entrySize - frameOffset), owner, i));
    }
  }

  start(counters: DriverCounters['rx']): void {
    this.counters = counters;
  }

  /** Buffers the consumer holds, with `posted` of them in the ring. */
  held(posted: number): number {
    return this.pool.entries - this.pool.available - posted;
  }

  /** Hands `post` free buffers (synced for the device) until `room` are given or none is free; how many. None once closed. */
  fill(room: number, post: (id: number) => void): number {
    if (!this.live) return 0;
    let added = 0;
    while (added < room) {
      const id = this.pool.alloc();
      if (id < 0) {
        // Every buffer is out with the consumer: the ring runs dry and the device drops (an overrun).
        this.counters.noBuffer++;
        break;
      }
      this.pool.sync(DmaSync.PREREAD, id);
      post(id);
      added++;
    }
    return added;
  }

  /** Buffer `id` came back with a bad frame: counted as an error, the buffer free again. */
  reject(id: number): void {
    this.counters.errors++;
    this.pool.release(id);
  }

  /** Buffer `id` came back with a frame of `length` bytes: its frame, synced, counted and held by the consumer. */
  frame(id: number, length: number): RxFrame {
    this.pool.sync(DmaSync.POSTREAD, id, this.frameOffset, length);
    const frame = this.frames[id]!;
    frame.length = length;
    frame.held = true;
    this.counters.frames++;
    this.counters.bytes += length;
    return frame;
  }

  /** A released frame's buffer is free again; false once closed (it stays with the host, which frees the memory). */
  recycle(id: number): boolean {
    if (!this.live) return false;
    this.pool.release(id);
    return true;
  }

  /** The incarnation ends: frames still held become stale (their release does nothing). */
  close(): void {
    this.live = false;
    for (const f of this.frames) f.held = false;
  }
}
