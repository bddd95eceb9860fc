/**
 * The transmit ring: legacy descriptors, and 2 KiB DMA buffers the port's
 * consumer fills (the kit's TxBuffers: one fewer than the descriptors, so
 * posting one never finds the ring full). post() puts a filled buffer in
 * the next descriptor by its precomputed bus address, and flush() tells
 * the device with one TDT write per batch. Completed descriptors are
 * reclaimed by their DD bit and their buffers given back.
 */
import { DmaSync, type DmaTag } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import { TxBuffers } from '../kit/tx-buffers.js';
import type { DriverCounters } from '../packet.js';
import { REG, RX_BUFFER_BYTES, TXD } from './registers.js';
import { E1000eRing } from './ring.js';

const COMMAND = TXD.CMD_EOP | TXD.CMD_IFCS | TXD.CMD_RS;

export class TxRing extends E1000eRing {
  private readonly buffers: TxBuffers;
  private giveBack: (buffer: number) => void = () => {};

  constructor(regs: BusSpace, tag: DmaTag, size: number) {
    super(regs, tag, size, REG.TDBAL);
    // One slot always stays empty (TDT == TDH means empty): a buffer for each of the others.
    this.buffers = new TxBuffers(tag, size - 1, RX_BUFFER_BYTES, 'e1000e');
  }

  get transmitBuffers() {
    return this.buffers.transmitBuffers;
  }

  /** Programs the ring's registers, empty, counting into `counters` and handing each buffer the device is done with to `done` from now on. */
  start(counters: DriverCounters['tx'], done: (buffer: number) => void): void {
    this.program();
    this.buffers.start(counters);
    this.giveBack = done;
  }

  /** Reclaims completed descriptors, each one's buffer given back; returns how many. */
  reclaim(): number {
    this.ring.pool.sync(DmaSync.POSTREAD | DmaSync.POSTWRITE, 0);
    let n = 0;
    for (; this.done(); n++) this.giveBack(this.shift());
    return n;
  }

  /** Puts buffer `index` (a frame of `length` bytes, padded by the consumer) in the next descriptor. */
  post(index: number, length: number): void {
    // Never: there is one buffer fewer than descriptors, and a buffer is in one descriptor at most.
    if (this.ring.count === this.size - 1) throw new Error('e1000e: the transmit ring is full');
    this.buffers.prepare(index, length);
    this.push(this.buffers.pool, index, length | COMMAND);
    this.buffers.posted(length);
  }

  /** One TDT write for everything posted since the last flush. */
  flush(): void {
    if (!this.buffers.flush()) return;
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
