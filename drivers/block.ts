/**
 * The block device API a storage driver provides to programs and other
 * actors in the same host (and that the NBD export serves to the kernel).
 * Every request is validated before it reaches a device. Two ways in:
 *
 * - read()/write()/flush()/discard(): a promise per request, any buffer.
 * - Registered memory: register() a SharedArrayBuffer once (or take one
 *   from allocBuffer()); the device keeps it reachable for DMA until
 *   unregister(), so a request on it costs no map and no copy. Its
 *   read()/write() take no promise and allocate nothing: each request ends
 *   with an emission on the buffer's `ends` (a Fanout), naming the tag the
 *   caller gave it. The promise API on a view of registered memory uses
 *   the registration too; any other buffer goes through the driver's
 *   pre-mapped bounce buffers (one copy), never a map per request.
 *
 * Every completion of either way is also on the `completions` stream
 * (built only while someone listens).
 */
import type { Observable } from 'rxjs';
import { UpciError } from '../kernel/errors.js';
import { Fanout } from '../pci/fanout.js';
import { allocShared } from '../shm/mapping.js';

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

/** How one request on registered memory ended. One object per buffer, reused: read it during the emission. */
export interface BlockEnd {
  /** The tag the caller gave read() or write(). */
  readonly tag: number;
  /** Undefined when it succeeded. */
  readonly error: Error | undefined;
}

/**
 * The brand of a RegisteredBuffer: only the block devices' registrations
 * (RegisteredMemory) carry it, so an unregistered array does not
 * type-check where registered memory is asked for.
 */
export const REGISTERED: unique symbol = Symbol('upci.registered');

/**
 * Memory a block device reaches for DMA from register() (or allocBuffer())
 * until unregister(): requests on it go to the device with no map, no copy
 * and no allocation.
 */
export interface RegisteredBuffer {
  readonly [REGISTERED]: true;
  /** The whole registered memory. */
  readonly bytes: Uint8Array;
  /**
   * Starts a read of `blocks` blocks at `lba` into bytes[offset ..]: at most
   * maxTransferBytes, `offset` a multiple of 4. No promise: it ends with an
   * emission on `ends` carrying `tag` (any integer the caller picks, e.g. a
   * lane). False when the device has no room for it now (every command slot
   * busy): nothing was started; start it again after one of yours ended.
   * A bad request throws (BlockRequestError), as does one on a device that
   * is gone (BlockGoneError, NvmeGoneError).
   */
  read(lba: number, blocks: number, offset: number, tag: number): boolean;
  /** As read(), from bytes[offset ..] to the device. */
  write(lba: number, blocks: number, offset: number, tag: number): boolean;
  /** Each request's end, in the order the device completed them. */
  readonly ends: Observable<BlockEnd>;
  /**
   * Later requests on this registration are refused; the device lets go of
   * the memory once no registration of it is left and its last request in
   * flight has ended.
   */
  unregister(): void;
}

export interface BlockDevice extends BlockGeometry {
  /**
   * Reads `blocks` blocks at `lba` into `into` (exactly blocks × blockSize
   * bytes) or a new array. An `into` inside registered memory (register(),
   * allocBuffer()) is DMAed directly, with no copy and no map; so is
   * `data` of write(). Any other buffer is copied through the driver's
   * pre-mapped bounce buffers (and, from another thread than the driver's,
   * through the service's shared bounce area: services/block-service.ts).
   */
  read(lba: number, blocks: number, into?: Uint8Array): Promise<Uint8Array>;
  /** Writes `data` (a whole number of blocks, at least one) at `lba`; resolves once the device completed it. */
  write(lba: number, data: Uint8Array): Promise<void>;
  /** Makes every completed write durable (the device's volatile cache flushed). */
  flush(): Promise<void>;
  /** Tells the device the blocks' contents are no longer needed. */
  discard(lba: number, blocks: number): Promise<void>;
  /**
   * Makes `memory` (page-aligned shared memory: shm/mapping allocShared, or
   * allocBuffer()) reachable by the device until unregister(): one mapping
   * now, none per request. Each call gives a registration of its own (its
   * own `ends`, so two users never see each other's tags); registrations
   * of the same memory share its one mapping. Memory the device cannot
   * reach is refused (BlockRequestError naming why).
   */
  register(memory: SharedArrayBuffer): RegisteredBuffer;
  /** `bytes` (rounded up to whole pages) of new shared memory, registered. */
  allocBuffer(bytes: number): RegisteredBuffer;
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
 * How a driver's error class crosses to another thread as itself (the
 * block service's error areas, services/block-service.ts): the fields it
 * carries, and the error made again from them (its message is then set to
 * the original's). The service layer knows no driver: a driver registers
 * its classes with crossesThreads() where it defines them. In a thread
 * that has not loaded the driver's module the error arrives as an Error
 * with the same name and message.
 */
export interface ErrorCodec<E extends Error = Error> {
  readonly is: (e: Error) => e is E;
  readonly fields: (e: E) => readonly unknown[];
  readonly make: (fields: readonly unknown[]) => E;
}

const crossing = new Map<string, ErrorCodec>();

/** Registers how the class named `name` crosses threads; register a subclass before its parent (the first match is used). */
export function crossesThreads<E extends Error>(name: string, codec: ErrorCodec<E>): void {
  crossing.set(name, codec as unknown as ErrorCodec);
}

/** The driver error classes registered in this thread, by name, in the order registered. */
export const crossingErrors: ReadonlyMap<string, ErrorCodec> = crossing;

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

  /** Whether a request on registered memory of `length` bytes passes registered(): the hot path's check, with no closure. */
  registeredOk(device: BlockGeometry, lba: number, blocks: number, offset: number, length: number): boolean {
    const bytes = blocks * device.blockSize;
    return Number.isSafeInteger(lba) && lba >= 0 && Number.isSafeInteger(blocks) && blocks >= 1 && lba + blocks <= device.blockCount
      && bytes <= device.maxTransferBytes && Number.isSafeInteger(offset) && offset >= 0 && offset % 4 === 0 && offset + bytes <= length;
  },

  /** A request on registered memory of `length` bytes: the range, one device command at most, inside the memory. */
  registered(device: BlockGeometry, lba: number, blocks: number, offset: number, length: number): void {
    checkRequest.range(device, lba, blocks);
    const bytes = blocks * device.blockSize;
    if (bytes > device.maxTransferBytes) {
      throw new BlockRequestError(`${device.name}: ${bytes} bytes exceed one request on registered memory (${device.maxTransferBytes})`, 'split it, or use the promise API, which splits');
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % 4 !== 0 || offset + bytes > length) {
      throw new BlockRequestError(`${device.name}: offset ${offset} + ${bytes} bytes is not a 4-byte-aligned range inside the ${length}-byte registered memory`, 'pass an offset that is a multiple of 4 and keeps the request inside the memory');
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
 * What every RegisteredBuffer implementation shares: the brand, its memory,
 * and its `ends`: a Fanout (no allocation per emission) of one end record
 * reused for every request.
 */
export abstract class RegisteredMemory implements RegisteredBuffer {
  readonly [REGISTERED] = true as const;
  private readonly fanout = new Fanout<BlockEnd>();
  readonly ends = this.fanout.observable;
  private readonly end: { tag: number; error: Error | undefined } = { tag: 0, error: undefined };

  constructor(readonly bytes: Uint8Array) {}

  abstract read(lba: number, blocks: number, offset: number, tag: number): boolean;
  abstract write(lba: number, blocks: number, offset: number, tag: number): boolean;
  abstract unregister(): void;

  /** Request `tag` ended: tells every subscriber of `ends`. */
  emitEnd(tag: number, error: Error | undefined): void {
    this.end.tag = tag;
    this.end.error = error;
    this.fanout.emit(this.end);
    this.end.error = undefined;
  }
}

/** Rounds `bytes` up to whole pages of new shared memory, for allocBuffer(). */
export function sharedPages(bytes: number, pageSize = 4096): SharedArrayBuffer {
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new BlockRequestError(`a buffer of ${bytes} bytes`, 'ask for a positive whole number of bytes');
  return allocShared(Math.ceil(bytes / pageSize) * pageSize);
}

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
  /** A Fanout, not an RxJS Subject: emitting allocates nothing (pci/fanout.ts). */
  private readonly ended = new Fanout<BlockCompletion>();
  readonly completions = this.ended.observable;
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
  abstract register(memory: SharedArrayBuffer): RegisteredBuffer;

  allocBuffer(bytes: number): RegisteredBuffer {
    return this.register(sharedPages(bytes));
  }

  /** Whether anyone listens to `completions`: a request then notes its start time. */
  protected get reporting(): boolean {
    return this.ended.observed;
  }

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
    if (this.ended.observed) this.ended.emit({ op, lba, blocks, error, latencyUs: Math.round((performance.now() - started) * 1000) });
  }
}
