/**
 * The transmit ring: legacy descriptors, one 2 KiB DMA buffer per slot.
 * send() copies frames into the slots' buffers (the caller's memory is not
 * DMA-mapped), posts them with one TDT write per batch and takes only as
 * many as the ring has room for: the rest is the caller's to retry
 * (backpressure). Completed slots are reclaimed by their DD bit.
 */
import { DmaSync, type DmaTag } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import { programRing, ringPool, writeAddress } from './buffers.js';
import { DESC_BYTES, MIN_FRAME, REG, RX_BUFFER_BYTES, TXD } from './registers.js';

export interface TxCounters {
  frames: number;
  bytes: number;
  /** send() calls that could not take every frame (the ring was full). */
  ringFull: number;
}

const COMMAND = TXD.CMD_EOP | TXD.CMD_IFCS | TXD.CMD_RS;

export class TxRing {
  private readonly desc: Uint32Array;
  private readonly ring: DmaPool;
  private readonly buffers: DmaPool;
  private readonly bytes: Uint8Array;
  private tail = 0;
  private clean = 0;
  private inFlight = 0;
  readonly counters: TxCounters = { frames: 0, bytes: 0, ringFull: 0 };

  constructor(private readonly regs: BusSpace, tag: DmaTag, readonly size: number) {
    this.ring = ringPool(tag, size, DESC_BYTES);
    // Slot i always uses entry i: the ring's order is the buffers' order, no free list needed.
    this.buffers = tag.createPool({ entrySize: RX_BUFFER_BYTES, entries: size, access: 'read' });
    this.desc = new Uint32Array(this.ring.buffer, 0, size * 4);
    this.bytes = new Uint8Array(this.buffers.buffer);
  }

  start(): void {
    programRing(this.regs, REG.TDBAL, this.ring, this.size * DESC_BYTES);
  }

  /** Free slots (one is always left empty: TDT == TDH means empty). */
  get room(): number {
    return this.size - 1 - this.inFlight;
  }

  get pending(): number {
    return this.inFlight;
  }

  /** Reclaims completed slots; returns how many. */
  reclaim(): number {
    const d = this.desc;
    this.ring.sync(DmaSync.POSTREAD | DmaSync.POSTWRITE, 0);
    let n = 0;
    while (this.inFlight > 0 && (d[this.clean * 4 + 3]! & TXD.STAT_DD) !== 0) {
      d[this.clean * 4 + 3] = 0;
      this.clean = (this.clean + 1) % this.size;
      this.inFlight--;
      n++;
    }
    return n;
  }

  /** Posts frames[from..] (already validated) while there is room; returns how many were posted. */
  post(frames: readonly Uint8Array[], from: number): number {
    if (this.room < frames.length - from) this.reclaim();
    const d = this.desc;
    let i = from;
    for (; i < frames.length && this.inFlight < this.size - 1; i++) {
      const frame = frames[i]!;
      const at = this.buffers.offsetOf(this.tail);
      this.bytes.set(frame, at);
      let length = frame.length;
      // TCTL.PSP pads short frames on the wire; QEMU 7.2 does not, so the driver does.
      if (length < MIN_FRAME) {
        this.bytes.fill(0, at + length, at + MIN_FRAME);
        length = MIN_FRAME;
      }
      this.buffers.sync(DmaSync.PREWRITE, this.tail, 0, length);
      const w = this.tail * 4;
      writeAddress(d, w, this.buffers.busAddresses[this.tail]!);
      d[w + 2] = length | COMMAND;
      d[w + 3] = 0;
      this.tail = (this.tail + 1) % this.size;
      this.inFlight++;
      this.counters.frames++;
      this.counters.bytes += length;
    }
    const posted = i - from;
    if (posted > 0) {
      this.ring.sync(DmaSync.PREWRITE, 0);
      this.regs.write4(REG.TDT, this.tail);
    }
    if (i < frames.length) this.counters.ringFull++;
    return posted;
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
