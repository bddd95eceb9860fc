/**
 * The block layer on an NVMe controller: request validation (nothing bad
 * reaches the controller), splitting to the transfer limit, one bounce
 * buffer per command ID (a DMA pool per queue, so a command's buffer is
 * known from its ID) or a per-request map of the caller's own shared
 * memory, loaded at submission and unloaded at completion while the
 * controller keeps working, and a wait list when every command ID is busy.
 */
import type { DmaPool } from '../../pci/dma-pool.js';
import type { LoadedDmaMap } from '../../pci/bus-dma.js';
import { BlockDeviceBase, checkRequest, type BlockOperation } from '../block.js';
import { NvmeController, SUBMIT_FULL, commandName, statusError } from './controller.js';
import { BlockRequestError, NvmeGoneError } from './errors.js';
import type { QueuePair } from './queue.js';
import { NVM, PAGE, type NamespaceIdentity } from './registers.js';

/** A chunk waiting for a free command ID: true once it is submitted or refused, false when the queue was full. */
type Waiter = (q: QueuePair) => boolean;

/** The controller's I/O queues with their bounce pools, shared by its namespaces. */
export class IoQueues {
  readonly data: DmaPool[];
  readonly views: Uint8Array[][];
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

export class NvmeNamespace extends BlockDeviceBase {
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
        const handler = (status: number) => {
          io.inFlight.delete(fail);
          io.drain();
          io.completed();
          const error = status === 0 ? undefined : statusError(commandName(false, opcode), status, io.controller.options.commandTimeoutMs);
          this.report(op, lba, blocks, error, started);
          if (error === undefined) resolve();
          else reject(error);
        };
        return io.controller.submitTo(q, false, opcode, this.nsid, prp1, 0, cdw10, cdw11, cdw12, 0, handler, fail) !== SUBMIT_FULL;
      });
    });
  }

  /**
   * Reads or writes `blocks` at `lba` in chunks of at most chunkBytes. A
   * buffer over a page-aligned SharedArrayBuffer is loaded for DMA once for
   * the whole request (unloaded at its completion); any other goes through
   * the command IDs' bounce buffers.
   */
  private transfer(op: 'read' | 'write', lba: number, blocks: number, buffer: Uint8Array): Promise<void> {
    const started = performance.now();
    const io = this.io;
    const bs = this.blockSize;
    const chunkBlocks = Math.floor(io.chunkBytes / bs);
    const direct = this.loadDirect(buffer, op);
    const opcode = op === 'read' ? NVM.READ : NVM.WRITE;
    let remaining = Math.ceil(blocks / chunkBlocks);
    let failure: Error | undefined;
    return new Promise<void>((resolve, reject) => {
      const finish = (e: Error | undefined) => {
        if (e !== undefined && failure === undefined) failure = e;
        if (--remaining > 0) return;
        io.inFlight.delete(abandon);
        // The controller has finished with every chunk: unload while it keeps working on others.
        if (direct?.isLoaded) direct.unload();
        this.report(op, lba, blocks, failure, started);
        if (failure === undefined) resolve();
        else reject(failure);
      };
      const abandon = (e: Error) => {
        io.inFlight.delete(abandon);
        if (direct?.isLoaded) direct.unload();
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
          const bus = direct !== undefined ? direct.busAddress(offset) : io.data[q.id - 1]!.busAddresses[cid]!;
          if (direct === undefined && op === 'write') bounce.set(buffer.subarray(offset, offset + bytes));
          const prp2 = q.prp2For(cid, bus, bytes);
          q.freeCid(cid);
          const handler = (status: number, _dw0: number, doneCid: number) => {
            if (NvmeController.wasAborted(status) && q.retries[doneCid]! < 2) {
              q.resubmit(doneCid, handler, performance.now() + io.controller.options.commandTimeoutMs);
              return;
            }
            if (status === 0 && direct === undefined && op === 'read') buffer.set(bounce.subarray(0, bytes), offset);
            io.drain();
            finish(status === 0 ? undefined : statusError(commandName(false, opcode), status, io.controller.options.commandTimeoutMs));
            io.completed();
          };
          return io.controller.submitTo(q, false, opcode, this.nsid, bus, prp2, slba >>> 0, Math.floor(slba / 2 ** 32), n - 1, 0, handler, (e) => finish(e)) !== SUBMIT_FULL;
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
    const bus = this.io.data[q.id - 1]!.busAddresses[cid]!;
    const prp2 = q.prp2For(cid, bus, blocks * this.blockSize);
    q.freeCid(cid);
    return this.io.controller.submitTo(q, false, NVM.READ, this.nsid, bus, prp2, lba >>> 0, Math.floor(lba / 2 ** 32), blocks - 1, 0, handler, onError);
  }

  /** A per-request map of the caller's shared memory, when it can be given to the device as is. */
  private loadDirect(buffer: Uint8Array, op: 'read' | 'write'): LoadedDmaMap | undefined {
    if (!(buffer.buffer instanceof SharedArrayBuffer) || buffer.byteOffset % PAGE !== 0 || buffer.buffer.byteLength % PAGE !== 0) return undefined;
    try {
      return this.io.controller.tag.createMap(buffer.length).load(buffer.buffer, buffer.byteOffset, buffer.length, { access: op === 'read' ? 'write' : 'read' });
    } catch {
      // Not memory the IOMMU can map (not from allocShared): bounce it.
      return undefined;
    }
  }
}
