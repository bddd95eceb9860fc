/**
 * The transmit ring: legacy descriptors, and 2 KiB DMA buffers the port's
 * consumer fills (PacketBinding.transmitBuffers: one fewer than the
 * descriptors, so posting one never finds the ring full). post() puts a
 * filled buffer in the next descriptor by its precomputed bus address, and
 * flush() tells the device with one TDT write per batch. Completed
 * descriptors are reclaimed by their DD bit and their buffers given back.
 */
import { DmaSync, type DmaTag } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import { storeBus64 } from '../kit/bus-address.js';
import type { DescriptorRing } from '../kit/ring.js';
import type { DriverCounters, TransmitBuffers } from '../packet.js';
import { descriptorRing, programRing } from './buffers.js';
import { REG, RX_BUFFER_BYTES, TXD } from './registers.js';

const COMMAND = TXD.CMD_EOP | TXD.CMD_IFCS | TXD.CMD_RS;

export class TxRing {
  /** Tail (TDT): the next descriptor posted; head: the next to reclaim; between them, those in flight. */
  private readonly ring: DescriptorRing;
  private readonly buffers: DmaPool;
  /** The buffer each descriptor in flight carries. */
  private readonly slotBuffer: Int32Array;
  private unflushed = false;
  private counters!: DriverCounters['tx'];
  readonly transmitBuffers: TransmitBuffers;

  constructor(private readonly regs: BusSpace, tag: DmaTag, readonly size: number) {
    this.ring = descriptorRing(regs, tag, size, REG.TDBAL);
    // One slot always stays empty (TDT == TDH means empty): a buffer for each of the others.
    this.buffers = tag.createPool({ entrySize: RX_BUFFER_BYTES, entries: size - 1, access: 'read' });
    this.slotBuffer = new Int32Array(size);
    this.transmitBuffers = { buffer: this.buffers.buffer, stride: this.buffers.stride, entries: this.buffers.entries };
  }

  /** Programs the ring registers, counting into `counters` from now on. */
  start(counters: DriverCounters['tx']): void {
    this.counters = counters;
    programRing(this.regs, REG.TDBAL, this.ring);
  }

  /** Reclaims completed descriptors, handing each one's buffer to `done`; returns how many. */
  reclaim(done: (buffer: number) => void): number {
    const d = this.ring.words;
    this.ring.pool.sync(DmaSync.POSTREAD | DmaSync.POSTWRITE, 0);
    let n = 0;
    while (this.ring.count > 0 && (d[this.ring.headSlot * 4 + 3]! & TXD.STAT_DD) !== 0) {
      const slot = this.ring.shift();
      d[slot * 4 + 3] = 0;
      n++;
      done(this.slotBuffer[slot]!);
    }
    return n;
  }

  /** Puts buffer `index` (a frame of `length` bytes, padded by the consumer) in the next descriptor. */
  post(index: number, length: number): void {
    if (!(index >= 0 && index < this.buffers.entries && length > 0 && length <= RX_BUFFER_BYTES)) {
      throw new Error(`e1000e: transmit of buffer ${index}, ${length} bytes: no such buffer or length (${this.buffers.entries} buffers of ${RX_BUFFER_BYTES})`);
    }
    // Never: there is one buffer fewer than descriptors, and a buffer is in one descriptor at most.
    if (this.ring.count === this.size - 1) throw new Error('e1000e: the transmit ring is full');
    this.buffers.sync(DmaSync.PREWRITE, index, 0, length);
    const slot = this.ring.push();
    storeBus64(this.ring.words, slot * 4, this.buffers.busAddresses, index);
    this.ring.words[slot * 4 + 2] = length | COMMAND;
    this.ring.words[slot * 4 + 3] = 0;
    this.slotBuffer[slot] = index;
    this.counters.frames++;
    this.counters.bytes += length;
    this.unflushed = true;
  }

  /** One TDT write for everything posted since the last flush. */
  flush(): void {
    if (!this.unflushed) return;
    this.unflushed = false;
    this.ring.pool.sync(DmaSync.PREWRITE, 0);
    this.ring.ringTail();
  }

  /**
   * Frames posted that the device never fetched: the ones between TDH and
   * TDT when the incarnation ends. Read before bus mastering goes off.
   */
  unsent(): number {
    return (this.ring.tail - this.regs.read4(REG.TDH) + this.size) % this.size;
  }
}
