/**
 * The transmit ring: legacy descriptors, one 2 KiB DMA buffer per slot.
 * send() copies frames into the slots' buffers (the caller's memory is not
 * DMA-mapped), posts them with one TDT write per batch and takes only as
 * many as the ring has room for: the rest is the caller's to retry
 * (backpressure). Completed slots are reclaimed by their DD bit.
 */
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaTag } from '../../pci/bus-dma.js';
import { allocateArea, DmaSync, type BufferArea } from './buffers.js';
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
  private readonly ring: BufferArea;
  private readonly buffers: BufferArea;
  private readonly bytes: Uint8Array;
  private tail = 0;
  private clean = 0;
  private inFlight = 0;
  readonly counters: TxCounters = { frames: 0, bytes: 0, ringFull: 0 };

  constructor(private readonly regs: BusSpace, tag: DmaTag, readonly size: number) {
    this.ring = allocateArea(tag, 1, size * DESC_BYTES);
    this.buffers = allocateArea(tag, size, RX_BUFFER_BYTES);
    this.desc = new Uint32Array(this.ring.buffer, 0, size * 4);
    this.bytes = new Uint8Array(this.buffers.buffer);
  }

  start(): void {
    const r = this.regs;
    r.write4(REG.TDBAL, this.ring.busLow[0]!);
    r.write4(REG.TDBAH, this.ring.busHigh[0]!);
    r.write4(REG.TDLEN, this.size * DESC_BYTES);
    r.write4(REG.TDH, 0);
    r.write4(REG.TDT, 0);
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
    this.ring.sync(DmaSync.POSTREAD | DmaSync.POSTWRITE);
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
      const at = this.tail * RX_BUFFER_BYTES;
      this.bytes.set(frame, at);
      let length = frame.length;
      // TCTL.PSP pads short frames on the wire; QEMU 7.2 does not, so the driver does.
      if (length < MIN_FRAME) {
        this.bytes.fill(0, at + length, at + MIN_FRAME);
        length = MIN_FRAME;
      }
      const w = this.tail * 4;
      d[w] = this.buffers.busLow[this.tail]!;
      d[w + 1] = this.buffers.busHigh[this.tail]!;
      d[w + 2] = length | COMMAND;
      d[w + 3] = 0;
      this.tail = (this.tail + 1) % this.size;
      this.inFlight++;
      this.counters.frames++;
      this.counters.bytes += length;
    }
    const posted = i - from;
    if (posted > 0) {
      this.buffers.sync(DmaSync.PREWRITE);
      this.ring.sync(DmaSync.PREWRITE);
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
