/**
 * Registered memory for a block driver (NVMe, virtio-blk): register()
 * maps the caller's shared memory for DMA once, in one piece, so a request
 * on any range of it is one bus address plus an offset, with no map per
 * request; the mapping is shared by the registrations of the same memory
 * and unloaded once the last is gone and no request uses it. A request on
 * it through RegisteredBuffer.read()/write() allocates nothing: its state
 * goes in a RegisteredRequests table by tracker ID, and its end is the
 * registration's reused end record.
 */
import type { DmaTag, LoadedDmaMap } from '../../pci/bus-dma.js';
import { BlockDeviceBase, BlockGoneError, BlockRequestError, RegisteredMemory, checkRequest, type BlockGeometry, type BlockOperation, type RegisteredBuffer } from '../block.js';

/** `memory` mapped for DMA through `tag` as one segment, or a BlockRequestError naming why not (`name`: the device's). */
function mapWhole(name: string, tag: DmaTag, memory: SharedArrayBuffer): LoadedDmaMap {
  let map: LoadedDmaMap;
  try {
    map = tag.createMap(memory.byteLength).load(memory, 0, memory.byteLength, { access: 'both' });
  } catch (e) {
    throw new BlockRequestError(`${name}: the memory cannot be mapped for DMA: ${e instanceof Error ? e.message : String(e)}`, 'register page-aligned shared memory of whole pages: allocShared() or allocBuffer()');
  }
  if (map.segments.length !== 1) {
    map.unload();
    throw new BlockRequestError(`${name}: the memory was mapped in ${map.segments.length} pieces, not one`, 'register smaller memory');
  }
  return map;
}

/** One DMA map of registered memory, with its users: registrations, and requests in flight on it. */
export class Mapping {
  registrations = 0;
  inFlight = 0;

  constructor(
    readonly memory: SharedArrayBuffer,
    readonly map: LoadedDmaMap,
    /** The bus address of the memory's first byte: it is one segment. */
    readonly bus: number,
  ) {}

  get loaded(): boolean {
    return this.map.isLoaded;
  }
}

class Registration extends RegisteredMemory {
  private active = true;

  constructor(
    /** @internal */
    readonly device: RegisteredBlockDevice,
    readonly mapping: Mapping,
  ) {
    super(new Uint8Array(mapping.memory));
    mapping.registrations++;
  }

  get live(): boolean {
    return this.active && this.mapping.loaded;
  }

  read(lba: number, blocks: number, offset: number, tag: number): boolean {
    return this.device.submitRegistered(this, false, lba, blocks, offset, tag);
  }

  write(lba: number, blocks: number, offset: number, tag: number): boolean {
    return this.device.submitRegistered(this, true, lba, blocks, offset, tag);
  }

  unregister(): void {
    if (!this.active) return;
    this.active = false;
    this.mapping.registrations--;
    this.device.release(this.mapping, 0);
  }
}

export type { Registration };

/** Per tracker ID: the request on registered memory it carries (none: undefined owner). */
export class RegisteredRequests {
  readonly owner: (Registration | undefined)[];
  readonly tag: Int32Array;
  readonly lba: Float64Array;
  readonly blocks: Int32Array;
  /** 1: a write, 0: a read. */
  readonly write: Uint8Array;
  /** performance.now() at submission, while someone listens to `completions`. */
  readonly started: Float64Array;

  constructor(readonly count: number) {
    this.owner = new Array<Registration | undefined>(count).fill(undefined);
    this.tag = new Int32Array(count);
    this.lba = new Float64Array(count);
    this.blocks = new Int32Array(count);
    this.write = new Uint8Array(count);
    this.started = new Float64Array(count);
  }

  /** Tracker `id`'s request ended: reported by its device, its registration told. */
  end(id: number, error: Error | undefined): void {
    const registration = this.owner[id]!;
    this.owner[id] = undefined;
    registration.device.requestEnded(registration, this, id, error);
  }
}

/** A BlockDevice whose register() is registered memory as above; the driver issues the requests (issueRegistered). */
export abstract class RegisteredBlockDevice extends BlockDeviceBase {
  private readonly mappings = new Map<SharedArrayBuffer, Mapping>();
  /** Settlers of every promise request not yet ended, for failPending(). */
  private readonly pending = new Set<(e: Error) => void>();

  constructor(geometry: BlockGeometry, private readonly dmaTag: DmaTag) {
    super(geometry);
  }

  /** Why the device takes no requests any more (undefined: it does). */
  protected abstract get goneReason(): string | undefined;

  /**
   * Submits a request on registered memory (already checked) at `offset`
   * in it (the bus address is registration.mapping.bus + offset: computed
   * there, as a number argument above 2^31 can be a heap number per call),
   * in a tracker of the driver's; false when every one is taken. It calls
   * began() once it is submitted, and its RegisteredRequests' end() when
   * the request ends.
   */
  protected abstract issueRegistered(registration: Registration, write: boolean, lba: number, blocks: number, offset: number, tag: number): boolean;

  protected goneError(): BlockGoneError {
    return new BlockGoneError(`${this.name}: ${this.goneReason}`);
  }

  register(memory: SharedArrayBuffer): RegisteredBuffer {
    if (!(memory instanceof SharedArrayBuffer)) throw new BlockRequestError(`${this.name}: only a SharedArrayBuffer can be registered`, 'allocate the memory with allocShared() or allocBuffer()');
    if (this.goneReason !== undefined) throw this.goneError();
    const known = this.mappings.get(memory);
    if (known?.loaded) return new Registration(this, known);
    const map = mapWhole(this.name, this.dmaTag, memory);
    const mapping = new Mapping(memory, map, map.busAddress(0));
    this.mappings.set(memory, mapping);
    return new Registration(this, mapping);
  }

  /**
   * The loaded mapping `buffer` lies in (its first byte a multiple of
   * `align`), now held by a request until release(mapping, -1); undefined
   * when it lies in no registered memory.
   */
  protected holdMapping(buffer: Uint8Array, align: number): Mapping | undefined {
    const mapping = buffer.buffer instanceof SharedArrayBuffer && buffer.byteOffset % align === 0 ? this.mappings.get(buffer.buffer) : undefined;
    if (mapping?.loaded !== true) return undefined;
    mapping.inFlight++;
    return mapping;
  }

  /**
   * One request of the promise API as `commands` commands, which
   * `issue(done, direct)` starts (now, or from the driver's wait list),
   * each calling `done` once when it ends: settled once the last ended (the
   * first error wins), or by failPending(). A `buffer` in registered memory
   * (its first byte a multiple of `align`) is given to the device where it
   * is, `direct` its bus address, held until the request ends (an
   * unregister() meanwhile leaves it loaded); -1: the driver bounces it.
   */
  protected settled(op: BlockOperation, lba: number, blocks: number, buffer: Uint8Array | undefined, align: number, commands: number, issue: (done: (e: Error | undefined) => void, direct: number) => void): Promise<void> {
    const started = performance.now();
    let mapping = buffer === undefined ? undefined : this.holdMapping(buffer, align);
    let left = commands;
    let failure: Error | undefined;
    return new Promise<void>((resolve, reject) => {
      const settle = (e: Error | undefined) => {
        this.pending.delete(settle);
        if (mapping !== undefined) this.release(mapping, -1);
        mapping = undefined;
        this.report(op, lba, blocks, e, started);
        if (e === undefined) resolve();
        else reject(e);
      };
      this.pending.add(settle);
      issue((e) => {
        failure ??= e;
        if (--left === 0) settle(failure);
      }, mapping === undefined ? -1 : mapping.bus + buffer!.byteOffset);
    });
  }

  /** @internal Every promise request not yet ended fails with `error()`: the device is gone (the driver abandons it). */
  failPending(error: () => Error): void {
    for (const settle of [...this.pending]) settle(error());
  }

  /** @internal A registration (inFlight 0) or a request (-1) of `mapping` is done: unloaded when it was the last user. */
  release(mapping: Mapping, inFlight: number): void {
    mapping.inFlight += inFlight;
    if (mapping.registrations > 0 || mapping.inFlight > 0) return;
    if (mapping.map.isLoaded) mapping.map.unload();
    if (this.mappings.get(mapping.memory) === mapping) this.mappings.delete(mapping.memory);
  }

  /** @internal Registration.read()/write(): the checks inline (the full ones only to word a refusal), then the driver's issue. */
  submitRegistered(registration: Registration, write: boolean, lba: number, blocks: number, offset: number, tag: number): boolean {
    if (!checkRequest.registeredOk(this, lba, blocks, offset, registration.bytes.length)) {
      this.refused++;
      checkRequest.registered(this, lba, blocks, offset, registration.bytes.length);
    }
    if (!registration.live) {
      this.refused++;
      throw new BlockRequestError(`${this.name}: the memory is no longer registered`, 'register it again');
    }
    return this.issueRegistered(registration, write, lba, blocks, offset, tag);
  }

  /** The driver submitted a request on registered memory in tracker `id` of `requests`. */
  protected began(requests: RegisteredRequests, id: number, registration: Registration, write: boolean, lba: number, blocks: number, tag: number): void {
    requests.owner[id] = registration;
    requests.tag[id] = tag;
    requests.lba[id] = lba;
    requests.blocks[id] = blocks;
    requests.write[id] = write ? 1 : 0;
    requests.started[id] = this.reporting ? performance.now() : 0;
    registration.mapping.inFlight++;
  }

  /** @internal RegisteredRequests.end(): tracker `id`'s request on registered memory ended. */
  requestEnded(registration: Registration, requests: RegisteredRequests, id: number, error: Error | undefined): void {
    this.release(registration.mapping, -1);
    if (this.reporting) this.report(requests.write[id] === 1 ? 'write' : 'read', requests.lba[id]!, requests.blocks[id]!, error, requests.started[id]!);
    registration.emitEnd(requests.tag[id]!, error);
  }
}
