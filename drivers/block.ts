/**
 * The block device API a storage driver provides to programs and other
 * actors in the same host (and that the NBD export serves to the kernel).
 * Every request is validated before it reaches a device; each returns a
 * promise, and every completion is also on the `completions` stream.
 */
import { Subject, type Observable } from 'rxjs';
import { UpciError } from '../kernel/errors.js';

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

/** What a block device is, without its requests: what a request is checked against. */
export interface BlockGeometry {
  /** The name the host config gave it, e.g. "nvme0n1". */
  readonly name: string;
  readonly blockSize: number;
  readonly blockCount: number;
  /** Whether discard() reaches the device (NVMe Dataset Management); without it discard() is refused. */
  readonly canDiscard: boolean;
  /** Bytes one device command moves at most; larger requests are split. */
  readonly maxTransferBytes: number;
}

export interface BlockDevice extends BlockGeometry {
  /**
   * Reads `blocks` blocks at `lba` into `into` (exactly blocks × blockSize
   * bytes) or a new array. An `into` over a page-aligned SharedArrayBuffer
   * (shm/mapping allocShared) is loaded for DMA directly, with no copy; so
   * is `data` of write(). Any other buffer is copied through the driver's
   * bounce buffers (and, from another thread than the driver's, through
   * the service's shared bounce area: actors/block-service.ts).
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

/** A block request refused before anything reached the device. */
export class BlockRequestError extends UpciError {
  override readonly name = 'UpciError';
  constructor(message: string, fix: string) {
    super('OUT_OF_RANGE', message, fix);
  }
}

/** The request did not complete: the driver was detached or failed, and the host took the device back. */
export class BlockGoneError extends Error {
  override readonly name: string = 'BlockGoneError';
}

/**
 * The checks every block device makes before a request goes anywhere (the
 * driver's own, and the cross-thread proxy's, so a bad request never even
 * reaches the ring). Throws BlockRequestError naming the problem and the fix.
 */
export const checkRequest = {
  range(device: BlockGeometry, lba: number, blocks: number): void {
    const refuse = (message: string, fix: string) => { throw new BlockRequestError(`${device.name}: ${message}`, fix); };
    if (!Number.isSafeInteger(lba) || lba < 0) refuse(`LBA ${lba} is not a non-negative integer`, `use an LBA in 0..${device.blockCount - 1}`);
    if (!Number.isSafeInteger(blocks) || blocks < 0) refuse(`block count ${blocks} is not a non-negative integer`, 'pass a whole number of blocks');
    if (blocks === 0) refuse('a zero-length request', 'ask for at least one block');
    if (lba + blocks > device.blockCount) {
      refuse(`blocks ${lba}..${lba + blocks - 1} run past the end of the namespace (${device.blockCount} blocks of ${device.blockSize} bytes)`, `keep lba + blocks <= ${device.blockCount}`);
    }
  },

  read(device: BlockGeometry, lba: number, blocks: number, into: Uint8Array | undefined): void {
    checkRequest.range(device, lba, blocks);
    if (into !== undefined && (!(into instanceof Uint8Array) || into.length !== blocks * device.blockSize)) {
      throw new BlockRequestError(
        `${device.name}: the buffer holds ${into instanceof Uint8Array ? `${into.length} bytes` : 'no Uint8Array'}; ${blocks} blocks are ${blocks * device.blockSize} bytes`,
        'pass a Uint8Array of exactly blocks × blockSize bytes, or none',
      );
    }
  },

  write(device: BlockGeometry, lba: number, data: Uint8Array): void {
    if (!(data instanceof Uint8Array)) throw new BlockRequestError(`${device.name}: write data is not a Uint8Array`, 'pass the data as a Uint8Array');
    if (data.length % device.blockSize !== 0) {
      throw new BlockRequestError(`${device.name}: ${data.length} bytes are not a whole number of ${device.blockSize}-byte blocks`, `pad the data to a multiple of ${device.blockSize} bytes`);
    }
    checkRequest.range(device, lba, data.length / device.blockSize);
  },

  discard(device: BlockGeometry, lba: number, blocks: number): void {
    if (!device.canDiscard) throw new BlockRequestError(`${device.name}: the device does not discard`, 'do not discard on this device');
    checkRequest.range(device, lba, blocks);
  },
};

/**
 * What every BlockDevice implementation shares: its geometry, the
 * completions stream and the count of requests its checks refused.
 */
export abstract class BlockDeviceBase implements BlockDevice {
  readonly name: string;
  readonly blockSize: number;
  readonly blockCount: number;
  readonly canDiscard: boolean;
  readonly maxTransferBytes: number;
  private readonly subject = new Subject<BlockCompletion>();
  readonly completions = this.subject.asObservable();
  /** Requests refused by their checks, before they went anywhere. */
  refused = 0;

  constructor(geometry: BlockGeometry) {
    this.name = geometry.name;
    this.blockSize = geometry.blockSize;
    this.blockCount = geometry.blockCount;
    this.canDiscard = geometry.canDiscard;
    this.maxTransferBytes = geometry.maxTransferBytes;
  }

  abstract read(lba: number, blocks: number, into?: Uint8Array): Promise<Uint8Array>;
  abstract write(lba: number, data: Uint8Array): Promise<void>;
  abstract flush(): Promise<void>;
  abstract discard(lba: number, blocks: number): Promise<void>;

  /** Runs a request's checks (checkRequest), counting what they refuse: the refusal, or undefined. */
  protected refusal(check: () => void): Error | undefined {
    try {
      check();
      return undefined;
    } catch (e) {
      this.refused++;
      return e as Error;
    }
  }

  /** A request ended: on the completions stream, when anyone listens. */
  protected report(op: BlockOperation, lba: number, blocks: number, error: Error | undefined, started: number): void {
    if (this.subject.observed) this.subject.next({ op, lba, blocks, error, latencyUs: Math.round((performance.now() - started) * 1000) });
  }
}
