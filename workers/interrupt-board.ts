/**
 * The SharedArrayBuffer the interrupt worker and the main thread share: per
 * slot (one slot per interrupt vector) the eventfd to read and a running
 * count of interrupts; a sequence word the main thread waits on.
 */
export const SLOT_COUNT = 4096;
/** Slot 0 is the worker's own wake-up eventfd. */
export const WAKE_SLOT = 0;

const HEADER = 4;
export const SEQUENCE = 0;
export const SHUTDOWN = 1;
/** Batches the worker has finished: an fd removed before a batch began is no longer in its hands after it. */
export const EPOCH = 2;

export interface Board {
  readonly header: Int32Array;
  /** eventfd per slot, -1 when free. */
  readonly fds: Int32Array;
  /** Interrupts counted per slot (wrapping; readers take differences). */
  readonly counts: Uint32Array;
}

export function createBoardBuffer(): SharedArrayBuffer {
  const buffer = new SharedArrayBuffer(4 * (HEADER + 2 * SLOT_COUNT));
  new Int32Array(buffer, 4 * HEADER, SLOT_COUNT).fill(-1);
  return buffer;
}

export function board(buffer: SharedArrayBuffer): Board {
  return {
    header: new Int32Array(buffer, 0, HEADER),
    fds: new Int32Array(buffer, 4 * HEADER, SLOT_COUNT),
    counts: new Uint32Array(buffer, 4 * (HEADER + SLOT_COUNT), SLOT_COUNT),
  };
}
