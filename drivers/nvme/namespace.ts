/**
 * The block layer on an NVMe controller: request validation (nothing bad
 * reaches the controller), splitting to the transfer limit, one bounce
 * buffer per command ID (a DMA pool per queue, so a command's buffer is
 * known from its ID), registered memory (the caller's shared memory, loaded
 * for DMA once at register() and given to the controller at its bus address
 * with no map per request), and a wait list when every command ID is busy.
 *
 * A request on registered memory through RegisteredBuffer.read()/write()
 * allocates nothing: its state goes in typed arrays per queue and command
 * ID, its completion handler is one made per command ID when the queues
 * were, and its end is the registration's reused end record on a Fanout.
 */
import type { LoadedDmaMap } from '../../pci/bus-dma.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import { mapWhole } from '../registered-mapping.js';
import { BlockDeviceBase, BlockGoneError, RegisteredMemory, checkRequest, type BlockOperation, type RegisteredBuffer } from '../block.js';
import { NvmeController, SUBMIT_FULL, commandName, statusError } from './controller.js';
import { BlockRequestError, NvmeGoneError } from './errors.js';
import type { CompletionHandler, QueuePair } from './queue.js';
import { NVM, type NamespaceIdentity } from './registers.js';

/** A chunk waiting for a free command ID: true once it is submitted or refused, false when the queue was full. */
type Waiter = (q: QueuePair) => boolean;

/** Per I/O queue, per command ID: the request on registered memory it carries (none: undefined). */
interface RegisteredSlots {
  readonly owner: (NvmeRegistration | undefined)[];
  readonly tag: Int32Array;
  readonly lba: Float64Array;
  readonly blocks: Int32Array;
  readonly opcode: Uint8Array;
  /** performance.now() at submission, while someone listens to `completions`. */
  readonly started: Float64Array;
  /** One handler per command ID, made here once. */
  readonly handlers: CompletionHandler[];
}

/** The controller's I/O queues with their bounce pools, shared by its namespaces. */
export class IoQueues {
  readonly data: DmaPool[];
  readonly views: Uint8Array[][];
  readonly registered: RegisteredSlots[];
  private readonly waiting: Waiter[] = [];
  private next = 0;
  /** Rejecters of every request in flight, for abandon(). */
  readonly inFlight = new Set<(e: Error) => void>();
  /** Fault injection: throw at this many I/O completions (undefined: never). */
  failAt: number | undefined;
  completions = 0;

  constructor(
    readonly controller: NvmeController,
    /** Bytes one command moves at most (and each bounce buffer's size). */
    readonly chunkBytes: number,
  ) {
    this.data = controller.ioQueues.map((q) => controller.tag.createPool({ entrySize: chunkBytes, entries: q.depth - 1 }));
    this.views = this.data.map((pool) => Array.from({ length: pool.entries }, (_, i) => new Uint8Array(pool.buffer, pool.offsetOf(i), chunkBytes)));
    this.registered = controller.ioQueues.map((q) => {
      const cids = q.depth - 1;
      const slots: RegisteredSlots = {
        owner: new Array<NvmeRegistration | undefined>(cids).fill(undefined),
        tag: new Int32Array(cids), lba: new Float64Array(cids), blocks: new Int32Array(cids), opcode: new Uint8Array(cids), started: new Float64Array(cids),
        handlers: [],
      };
      for (let cid = 0; cid < cids; cid++) slots.handlers.push((status, _dw0, done) => this.registeredDone(q, slots, status, done));
      return slots;
    });
  }

  /** A queue with a free command ID, taken in turn; undefined when every one is full. */
  freeQueue(): QueuePair | undefined {
    const queues = this.controller.ioQueues;
    for (let i = 0; i < queues.length; i++) {
      const at = (this.next + i) % queues.length;
      const q = queues[at]!;
      if (q.outstanding < q.depth - 1) {
        this.next = (at + 1) % queues.length;
        return q;
      }
    }
    return undefined;
  }

  /** A command on registered memory completed (or was cancelled): its registration's end. */
  private registeredDone(q: QueuePair, slots: RegisteredSlots, status: number, cid: number): void {
    if (NvmeController.wasAborted(status) && q.retries[cid]! < 2) {
      q.resubmit(cid, slots.handlers[cid]!, performance.now() + this.controller.options.commandTimeoutMs);
      return;
    }
    const registration = slots.owner[cid]!;
    slots.owner[cid] = undefined;
    this.drain();
    const error = status === 0 ? undefined : statusError(commandName(false, slots.opcode[cid]!), status, this.controller.options.commandTimeoutMs);
    registration.ended(slots.tag[cid]!, error, slots.opcode[cid]!, slots.lba[cid]!, slots.blocks[cid]!, slots.started[cid]!);
    this.completed();
  }

  /** Runs `issue` on a queue with a free command ID now, or once one frees up (a gone controller refuses it at once). */
  schedule(issue: Waiter): void {
    if ((this.waiting.length === 0 || !this.controller.usable) && this.tryIssue(issue)) return;
    this.waiting.push(issue);
  }

  private tryIssue(issue: Waiter): boolean {
    const queues = this.controller.ioQueues;
    for (let i = 0; i < queues.length; i++) {
      const q = queues[(this.next + i) % queues.length]!;
      if (q.outstanding < q.depth - 1 && issue(q)) {
        this.next = (this.next + i + 1) % queues.length;
        return true;
      }
    }
    return false;
  }

  /** After each completion: start waiting chunks while command IDs are free. */
  drain(): void {
    while (this.waiting.length > 0 && this.tryIssue(this.waiting[0]!)) this.waiting.shift();
  }

  /** Counts a completion, and throws when fault injection says so (inside the reap: a driver crash). */
  completed(): void {
    this.completions++;
    if (this.failAt !== undefined && this.completions >= this.failAt) {
      this.failAt = undefined;
      throw new Error(`fault injection: failAfterCompletions=${this.completions} reached`);
    }
  }

  abandon(reason: string): void {
    this.controller.abandon(reason);
    this.waiting.length = 0;
    for (const reject of [...this.inFlight]) reject(new NvmeGoneError('I/O', reason));
    this.inFlight.clear();
  }

  free(): void {
    for (const pool of this.data) pool.free();
  }
}

/**
 * One DMA map of registered memory, loaded at the first register() and
 * unloaded once its last registration is gone and no request on it is in
 * flight (or with the driver's DMA at detach).
 */
class Mapping {
  registrations = 0;
  inFlight = 0;

  constructor(
    readonly memory: SharedArrayBuffer,
    private readonly map: LoadedDmaMap,
    /** The bus address of the memory's first byte: it is one segment. */
    readonly bus: number,
  ) {}

  get loaded(): boolean {
    return this.map.isLoaded;
  }

  /** Unloads when nothing uses it any more; true when it did (or it was gone already). */
  release(): boolean {
    if (this.registrations > 0 || this.inFlight > 0) return false;
    if (this.map.isLoaded) this.map.unload();
    return true;
  }
}

/** A registration of shared memory with a namespace: requests give the controller bus addresses inside its mapping. */
class NvmeRegistration extends RegisteredMemory {
  private active = true;

  constructor(
    private readonly ns: NvmeNamespace,
    readonly mapping: Mapping,
  ) {
    super(new Uint8Array(mapping.memory));
    mapping.registrations++;
  }

  get live(): boolean {
    return this.active && this.mapping.loaded;
  }

  read(lba: number, blocks: number, offset: number, tag: number): boolean {
    return this.ns.submitRegistered(this, NVM.READ, lba, blocks, offset, tag);
  }

  write(lba: number, blocks: number, offset: number, tag: number): boolean {
    return this.ns.submitRegistered(this, NVM.WRITE, lba, blocks, offset, tag);
  }

  unregister(): void {
    if (!this.active) return;
    this.active = false;
    this.mapping.registrations--;
    this.ns.released(this.mapping);
  }

  /** @internal IoQueues: a request ended. */
  ended(tag: number, error: Error | undefined, opcode: number, lba: number, blocks: number, started: number): void {
    this.ns.released(this.mapping, -1);
    this.ns.reportRegistered(opcode, lba, blocks, error, started);
    this.emitEnd(tag, error);
  }
}

export class NvmeNamespace extends BlockDeviceBase {
  /** Registered memory's mappings, by memory: the promise API finds its callers' registered buffers here. */
  private readonly mappings = new Map<SharedArrayBuffer, Mapping>();
  /** submitTo's onError for registered requests: a gone controller refuses them at once, as a throw. */
  private readonly refuseGone = (e: Error): never => {
    throw e;
  };

  constructor(
    private readonly io: IoQueues,
    readonly nsid: number,
    readonly identity: NamespaceIdentity,
    name: string,
  ) {
    super({ name, blockSize: identity.blockSize, blockCount: identity.blocks, canDiscard: io.controller.identity.datasetManagement, maxTransferBytes: io.chunkBytes });
  }

  /** The controller (Identify data, counters, passthrough). */
  get controller(): NvmeController {
    return this.io.controller;
  }

  private refuse(message: string, fix: string): never {
    throw new BlockRequestError(`${this.name}: ${message}`, fix);
  }

  read(lba: number, blocks: number, into?: Uint8Array): Promise<Uint8Array> {
    const refused = this.refusal(() => checkRequest.read(this, lba, blocks, into));
    if (refused !== undefined) return Promise.reject(refused);
    const buffer = into ?? new Uint8Array(blocks * this.blockSize);
    return this.transfer('read', lba, blocks, buffer).then(() => buffer);
  }

  write(lba: number, data: Uint8Array): Promise<void> {
    const refused = this.refusal(() => checkRequest.write(this, lba, data));
    if (refused !== undefined) return Promise.reject(refused);
    return this.transfer('write', lba, data.length / this.blockSize, data);
  }

  flush(): Promise<void> {
    return this.simple('flush', 0, 0, NVM.FLUSH, 0, 0, 0, -1);
  }

  discard(lba: number, blocks: number): Promise<void> {
    const refused = this.refusal(() => {
      if (!this.canDiscard) this.refuse('the controller has no Dataset Management (ONCS bit 2)', 'do not discard on this device');
      checkRequest.discard(this, lba, blocks);
      if (blocks > 0xffffffff) this.refuse(`${blocks} blocks exceed one range's 2^32 - 1`, 'discard in smaller pieces');
    });
    if (refused !== undefined) return Promise.reject(refused);
    // One range (16 bytes) in the command's bounce buffer: context attributes, NLB, SLBA.
    return this.simple('discard', lba, blocks, NVM.DSM, 0, 1 << 2, 0, 0);
  }

  /** A command with no data of the caller's: Flush, or DSM with its range list in the bounce buffer (range >= 0). */
  private simple(op: BlockOperation, lba: number, blocks: number, opcode: number, cdw10: number, cdw11: number, cdw12: number, range: number): Promise<void> {
    const started = performance.now();
    const io = this.io;
    return new Promise<void>((resolve, reject) => {
      const fail = (e: Error) => {
        io.inFlight.delete(fail);
        this.report(op, lba, blocks, e, started);
        reject(e);
      };
      io.inFlight.add(fail);
      io.schedule((q) => {
        const cid = q.allocCid();
        if (cid < 0) return false;
        const pool = io.data[q.id - 1]!;
        let prp1 = 0;
        if (range >= 0) {
          const v = new DataView(pool.buffer, pool.offsetOf(cid), 16);
          v.setUint32(0, 0, true);
          v.setUint32(4, blocks, true);
          v.setUint32(8, lba >>> 0, true);
          v.setUint32(12, Math.floor(lba / 2 ** 32), true);
          prp1 = pool.busAddresses[cid]!;
        }
        q.freeCid(cid);
        q.prps[0] = prp1;
        q.prps[1] = 0;
        const handler = (status: number) => {
          io.inFlight.delete(fail);
          io.drain();
          io.completed();
          const error = status === 0 ? undefined : statusError(commandName(false, opcode), status, io.controller.options.commandTimeoutMs);
          this.report(op, lba, blocks, error, started);
          if (error === undefined) resolve();
          else reject(error);
        };
        return io.controller.submitTo(q, false, opcode, this.nsid, cdw10, cdw11, cdw12, 0, handler, fail) !== SUBMIT_FULL;
      });
    });
  }

  register(memory: SharedArrayBuffer): RegisteredBuffer {
    if (!(memory instanceof SharedArrayBuffer)) throw new BlockRequestError(`${this.name}: only a SharedArrayBuffer can be registered`, 'allocate the memory with allocShared() or allocBuffer()');
    const known = this.mappings.get(memory);
    if (known?.loaded) return new NvmeRegistration(this, known);
    if (!this.io.controller.usable) throw new BlockGoneError(`${this.name}: the controller is gone; nothing can be registered with it`);
    const map = mapWhole(this.name, this.io.controller.tag, memory);
    const mapping = new Mapping(memory, map, map.busAddress(0));
    this.mappings.set(memory, mapping);
    return new NvmeRegistration(this, mapping);
  }

  /** @internal A registration or a request of `mapping` ended: unloads it when it was the last user. */
  released(mapping: Mapping, inFlight = 0): void {
    mapping.inFlight += inFlight;
    if (mapping.release() && this.mappings.get(mapping.memory) === mapping) this.mappings.delete(mapping.memory);
  }

  /** @internal NvmeRegistration: a request ended, on `completions` when anyone listens. */
  reportRegistered(opcode: number, lba: number, blocks: number, error: Error | undefined, started: number): void {
    if (this.reporting) this.report(opcode === NVM.READ ? 'read' : 'write', lba, blocks, error, started);
  }

  /**
   * A read or write of registered memory, one command, no allocation: the
   * checks inline (the full ones only to word a refusal), a queue with a
   * free command ID, the request's state in that queue's typed arrays, the
   * handler made for that command ID. False when every queue is full.
   */
  submitRegistered(registration: NvmeRegistration, opcode: number, lba: number, blocks: number, offset: number, tag: number): boolean {
    const io = this.io;
    if (!checkRequest.registeredOk(this, lba, blocks, offset, registration.bytes.length)) {
      this.refused++;
      checkRequest.registered(this, lba, blocks, offset, registration.bytes.length);
    }
    if (!registration.live) {
      this.refused++;
      this.refuse('the memory is no longer registered', 'register it again');
    }
    const q = io.freeQueue();
    if (q === undefined) return false;
    const cid = q.allocCid();
    q.prps[0] = registration.mapping.bus + offset;
    q.prp2For(cid, blocks * this.blockSize);
    q.freeCid(cid);
    const slots = io.registered[q.id - 1]!;
    slots.owner[cid] = registration;
    slots.tag[cid] = tag;
    slots.lba[cid] = lba;
    slots.blocks[cid] = blocks;
    slots.opcode[cid] = opcode;
    slots.started[cid] = this.reporting ? performance.now() : 0;
    try {
      io.controller.submitTo(q, false, opcode, this.nsid, lba | 0, Math.floor(lba / 2 ** 32), blocks - 1, 0, slots.handlers[cid]!, this.refuseGone);
    } catch (e) {
      slots.owner[cid] = undefined;
      throw e;
    }
    registration.mapping.inFlight++;
    return true;
  }

  /**
   * Reads or writes `blocks` at `lba` in chunks of at most chunkBytes. A
   * buffer inside registered memory is given to the controller where it is;
   * any other goes through the command IDs' bounce buffers (one copy),
   * never through a map of its own.
   */
  private transfer(op: 'read' | 'write', lba: number, blocks: number, buffer: Uint8Array): Promise<void> {
    const started = performance.now();
    const io = this.io;
    const bs = this.blockSize;
    const chunkBlocks = Math.floor(io.chunkBytes / bs);
    // Registered memory, when the first byte is dword-aligned as PRP1 must be.
    const mapping = buffer.buffer instanceof SharedArrayBuffer && buffer.byteOffset % 4 === 0 ? this.mappings.get(buffer.buffer) : undefined;
    const direct = mapping?.loaded === true ? mapping.bus + buffer.byteOffset : -1;
    // The request holds the mapping until it ends: an unregister() meanwhile leaves it loaded for the controller.
    let holds = direct >= 0;
    if (holds) mapping!.inFlight++;
    const opcode = op === 'read' ? NVM.READ : NVM.WRITE;
    let remaining = Math.ceil(blocks / chunkBlocks);
    let failure: Error | undefined;
    return new Promise<void>((resolve, reject) => {
      const finish = (e: Error | undefined) => {
        if (e !== undefined && failure === undefined) failure = e;
        if (--remaining > 0) return;
        io.inFlight.delete(abandon);
        if (holds) {
          holds = false;
          this.released(mapping!, -1);
        }
        this.report(op, lba, blocks, failure, started);
        if (failure === undefined) resolve();
        else reject(failure);
      };
      const abandon = (e: Error) => {
        io.inFlight.delete(abandon);
        if (holds) {
          holds = false;
          this.released(mapping!, -1);
        }
        this.report(op, lba, blocks, e, started);
        reject(e);
      };
      io.inFlight.add(abandon);
      for (let first = 0; first < blocks; first += chunkBlocks) {
        const n = Math.min(chunkBlocks, blocks - first);
        const offset = first * bs;
        const bytes = n * bs;
        const slba = lba + first;
        io.schedule((q) => {
          const cid = q.allocCid();
          if (cid < 0) return false;
          const bounce = io.views[q.id - 1]![cid]!;
          q.prps[0] = direct >= 0 ? direct + offset : io.data[q.id - 1]!.busAddresses[cid]!;
          if (direct < 0 && op === 'write') bounce.set(buffer.subarray(offset, offset + bytes));
          q.prp2For(cid, bytes);
          q.freeCid(cid);
          const handler = (status: number, _dw0: number, doneCid: number) => {
            if (NvmeController.wasAborted(status) && q.retries[doneCid]! < 2) {
              q.resubmit(doneCid, handler, performance.now() + io.controller.options.commandTimeoutMs);
              return;
            }
            if (status === 0 && direct < 0 && op === 'read') buffer.set(bounce.subarray(0, bytes), offset);
            io.drain();
            finish(status === 0 ? undefined : statusError(commandName(false, opcode), status, io.controller.options.commandTimeoutMs));
            io.completed();
          };
          return io.controller.submitTo(q, false, opcode, this.nsid, slba | 0, Math.floor(slba / 2 ** 32), n - 1, 0, handler, (e) => finish(e)) !== SUBMIT_FULL;
        });
      }
    });
  }

  /**
   * The load generator's path (perf.ts, like SPDK's perf): a read of
   * `blocks` at `lba` into the bounce buffer of the command ID it gets, on
   * I/O queue `queue`, with a handler the caller made once. Returns the
   * command ID, or -1 when the queue is full. No validation beyond the
   * range, no promise, no allocation.
   */
  submitRead(queue: number, lba: number, blocks: number, handler: (status: number, dw0: number, cid: number) => void, onError: (e: Error) => void): number {
    if (!(lba >= 0 && blocks >= 1 && lba + blocks <= this.blockCount && blocks * this.blockSize <= this.io.chunkBytes)) {
      this.refused++;
      this.refuse(`read of ${blocks} blocks at ${lba} is outside the namespace or over ${this.io.chunkBytes} bytes`, 'stay inside the namespace and the transfer limit');
    }
    const q = this.io.controller.ioQueues[queue]!;
    const cid = q.allocCid();
    if (cid < 0) return -1;
    q.prps[0] = this.io.data[q.id - 1]!.busAddresses[cid]!;
    q.prp2For(cid, blocks * this.blockSize);
    q.freeCid(cid);
    return this.io.controller.submitTo(q, false, NVM.READ, this.nsid, lba | 0, Math.floor(lba / 2 ** 32), blocks - 1, 0, handler, onError);
  }
}
