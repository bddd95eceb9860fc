/**
 * The SharedArrayBuffer the interrupt worker and the main thread share: per
 * slot (one slot per interrupt vector) a running count of interrupts; per
 * registered source, at its base slot, the fd to read and how to decode it;
 * the words by which the worker announces its batches and its exit.
 */
export const SLOT_COUNT = 4096;
/** Slot 0 is the worker's own wake-up fd (eventfd or pipe). */
export const WAKE_SLOT = 0;

const HEADER = 3;
export const SHUTDOWN = 0;
/** Batches the worker has finished: an fd removed before a batch began is no longer in its hands after it. */
export const EPOCH = 1;
/** Set (and EPOCH notified) when the worker has returned: no epoch will come any more. */
export const EXITED = 2;

/** How the worker reads a source's fd (the `formats` word of its base slot). */
export const FORMAT_COUNTER = 0;
export const FORMAT_RECORDS = 1;
/** The wake-up fd: read and discard until a short read. */
export const FORMAT_DRAIN = 2;

/** Bytes of one 'records' record: u32 vector, u32 count. */
export const RECORD_SIZE = 8;

export interface Board {
  readonly header: Int32Array;
  /** Per base slot: the fd to read, -1 when free (and on the other slots of a multi-vector source). */
  readonly fds: Int32Array;
  /** Per base slot: FORMAT_*. */
  readonly formats: Int32Array;
  /** Per base slot: the source's first vector (a record for vector v counts at slot base + v - first). */
  readonly firsts: Int32Array;
  /** Per base slot: how many slots (vectors) the source covers. */
  readonly spans: Int32Array;
  /** Interrupts counted per slot (wrapping; readers take differences). */
  readonly counts: Uint32Array;
}

const ARRAYS = 5;

export function createBoardBuffer(): SharedArrayBuffer {
  const buffer = new SharedArrayBuffer(4 * (HEADER + ARRAYS * SLOT_COUNT));
  new Int32Array(buffer, 4 * HEADER, SLOT_COUNT).fill(-1);
  return buffer;
}

export function board(buffer: SharedArrayBuffer): Board {
  const at = (i: number) => 4 * (HEADER + i * SLOT_COUNT);
  return {
    header: new Int32Array(buffer, 0, HEADER),
    fds: new Int32Array(buffer, at(0), SLOT_COUNT),
    formats: new Int32Array(buffer, at(1), SLOT_COUNT),
    firsts: new Int32Array(buffer, at(2), SLOT_COUNT),
    spans: new Int32Array(buffer, at(3), SLOT_COUNT),
    counts: new Uint32Array(buffer, at(4), SLOT_COUNT),
  };
}
