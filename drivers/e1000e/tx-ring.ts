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
import type { DriverCounters, TransmitBuffers } from '../packet.js';
import { programRing, ringPool, writeAddress } from './buffers.js';
import { DESC_BYTES, REG, RX_BUFFER_BYTES, TXD } from './registers.js';

const COMMAND = TXD.CMD_EOP | TXD.CMD_IFCS | TXD.CMD_RS;

export class TxRing {
  private readonly desc: Uint32Array;
  private readonly ring: DmaPool;
  private readonly buffers: DmaPool;
  /** The buffer each descriptor in flight carries. */
  private readonly slotBuffer: Int32Array;
  private tail = 0;
  private clean = 0;
  private inFlight = 0;
  private unflushed = false;
  private counters!: DriverCounters['tx'];
  readonly transmitBuffers: TransmitBuffers;

  constructor(private readonly regs: BusSpace, tag: DmaTag, readonly size: number) {
    this.ring = ringPool(tag, size, DESC_BYTES);
    // One slot always stays empty (TDT == TDH means empty): a buffer for each of the others.
    this.buffers = tag.createPool({ entrySize: RX_BUFFER_BYTES, entries: size - 1, access: 'read' });
    this.desc = new Uint32Array(this.ring.buffer, 0, size * 4);
    this.slotBuffer = new Int32Array(size);
    this.transmitBuffers = { buffer: this.buffers.buffer, stride: this.buffers.stride, entries: this.buffers.entries };
  }

  /** Programs the ring registers, counting into `counters` from now on. */
  start(counters: DriverCounters['tx']): void {
    this.counters = counters;
    programRing(this.regs, REG.TDBAL, this.ring, this.size * DESC_BYTES);
  }

  /** Reclaims completed descriptors, handing each one's buffer to `done`; returns how many. */
  reclaim(done: (buffer: number) => void): number {
    const d = this.desc;
    this.ring.sync(DmaSync.POSTREAD | DmaSync.POSTWRITE, 0);
    let n = 0;
    while (this.inFlight > 0 && (d[this.clean * 4 + 3]! & TXD.STAT_DD) !== 0) {
      d[this.clean * 4 + 3] = 0;
      const buffer = this.slotBuffer[this.clean]!;
      this.clean = (this.clean + 1) % this.size;
      this.inFlight--;
      n++;
      done(buffer);
    }
    return n;
  }

  /** Puts buffer `index` (a frame of `length` bytes, padded by the consumer) in the next descriptor. */
  post(index: number, length: number): void {
    if (!(index >= 0 && index < this.buffers.entries && length > 0 && length <= RX_BUFFER_BYTES)) {
      throw new Error(`e1000e: transmit of buffer ${index}, ${length} bytes: no such buffer or length (${this.buffers.entries} buffers of ${RX_BUFFER_BYTES})`);
    }
    // Never: there is one buffer fewer than descriptors, and a buffer is in one descriptor at most.
    if (this.inFlight === this.size - 1) throw new Error('e1000e: the transmit ring is full');
    this.buffers.sync(DmaSync.PREWRITE, index, 0, length);
    const w = this.tail * 4;
    writeAddress(this.desc, w, this.buffers.busAddresses[index]!);
    this.desc[w + 2] = length | COMMAND;
    this.desc[w + 3] = 0;
    this.slotBuffer[this.tail] = index;
    this.tail = (this.tail + 1) % this.size;
    this.inFlight++;
    this.counters.frames++;
    this.counters.bytes += length;
    this.unflushed = true;
  }

  /** One TDT write for everything posted since the last flush. */
  flush(): void {
    if (!this.unflushed) return;
    this.unflushed = false;
    this.ring.sync(DmaSync.PREWRITE, 0);
    this.regs.write4(REG.TDT, this.tail);
  }

  /**
   * Frames posted that the device never fetched: the ones between TDH and
   * TDT when the incarnation ends. Read before bus mastering goes off.
   */
  unsent(): number {
    const head = this.regs.read4(REG.TDH);
    return (this.tail - head + this.size) % this.size;
  }
}
