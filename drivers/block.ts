/**
 * The block device API a storage driver provides to programs and other
 * actors in the same host (and that the NBD export serves to the kernel).
 * Every request is validated before it reaches a device; each returns a
 * promise, and every completion is also on the `completions` stream.
 */
import type { Observable } from 'rxjs';

export type BlockOperation = 'read' | 'write' | 'flush' | 'discard';

export interface BlockCompletion {
  readonly op: BlockOperation;
  readonly lba: number;
  readonly blocks: number;
  /** Undefined when it succeeded. */
  readonly error: Error | undefined;
  /** From the call to the completion, in microseconds. */
  readonly latencyUs: number;
}

export interface BlockDevice {
  /** The name the host config gave it, e.g. "nvme0n1". */
  readonly name: string;
  readonly blockSize: number;
  readonly blockCount: number;
  /** Whether discard() reaches the device (NVMe Dataset Management); without it discard() is refused. */
  readonly canDiscard: boolean;
  /** Bytes one device command moves at most; larger requests are split. */
  readonly maxTransferBytes: number;
  /**
   * Reads `blocks` blocks at `lba` into `into` (exactly blocks × blockSize
   * bytes) or a new array. An `into` over a page-aligned SharedArrayBuffer
   * (shm/mapping allocShared) is loaded for DMA directly, with no copy.
   */
  read(lba: number, blocks: number, into?: Uint8Array): Promise<Uint8Array>;
  /** Writes `data` (a whole number of blocks, at least one) at `lba`; resolves once the device completed it. */
  write(lba: number, data: Uint8Array): Promise<void>;
  /** Makes every completed write durable (the device's volatile cache flushed). */
  flush(): Promise<void>;
  /** Tells the device the blocks' contents are no longer needed. */
  discard(lba: number, blocks: number): Promise<void>;
  readonly completions: Observable<BlockCompletion>;
}
