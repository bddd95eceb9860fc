/**
 * Request trackers in SPDK's shape (nvme_pcie_qpair's `struct
 * nvme_tracker`): one tracker per command ID, all made when the queue is,
 * each with its own DMA entries (a PRP list page, a bounce buffer, a
 * virtio-blk header) whose bus addresses are computed once, reused with
 * no allocation. Trackers are taken and given back in any order: a free
 * tracker's position in the free stack is kept, so one can also be taken
 * back by its ID (a command resubmitted under the ID it had), and a
 * tracker given back twice is refused instead of being handed out twice.
 */
import type { DmaPool } from '../../pci/dma-pool.js';

export class Trackers {
  /** Free IDs: stack[0, free). */
  private readonly stack: Int32Array;
  /** Per ID: its index in `stack` while free, -1 while taken. */
  private readonly where: Int32Array;
  private free: number;

  constructor(readonly count: number) {
    if (!(Number.isInteger(count) && count >= 1)) throw new RangeError(`a tracker table holds a positive whole number of trackers, not ${count}`);
    this.stack = new Int32Array(count);
    this.where = new Int32Array(count);
    // ID 0 on top: the first taken is 0, then 1, ...
    for (let i = 0; i < count; i++) {
      this.stack[i] = count - 1 - i;
      this.where[count - 1 - i] = i;
    }
    this.free = count;
  }

  /** Trackers taken now. */
  get outstanding(): number {
    return this.count - this.free;
  }

  get available(): number {
    return this.free;
  }

  /** A free tracker's ID, now taken; -1 when every one is. */
  take(): number {
    if (this.free === 0) return -1;
    const id = this.stack[--this.free]!;
    this.where[id] = -1;
    return id;
  }

  /** Takes tracker `id` if it is free (a command keeps its ID across a resubmission); false when it is taken. */
  takeId(id: number): boolean {
    const at = this.where[id]!;
    if (at < 0) return false;
    // The top of the stack fills the hole.
    const top = this.stack[--this.free]!;
    this.stack[at] = top;
    this.where[top] = at;
    this.where[id] = -1;
    return true;
  }

  /** Gives tracker `id` back; a tracker that is not taken is a driver bug (refused: it would be handed out twice). */
  give(id: number): void {
    if (!(id >= 0 && id < this.count) || this.where[id] !== -1) throw new RangeError(`tracker ${id} is not taken (of ${this.count}): given back twice`);
    this.where[id] = this.free;
    this.stack[this.free++] = id;
  }

  /** The IDs taken now, in ID order (not a hot path: resets, cancellation). */
  takenIds(): number[] {
    const ids: number[] = [];
    for (let id = 0; id < this.count; id++) if (this.where[id] === -1) ids.push(id);
    return ids;
  }
}

/** Each entry of `pool` (one per tracker) as bytes, `bytes` long, made once. */
export function entryViews(pool: DmaPool, bytes = pool.entrySize): Uint8Array[] {
  return Array.from({ length: pool.entries }, (_, i) => new Uint8Array(pool.buffer, pool.offsetOf(i), bytes));
}
