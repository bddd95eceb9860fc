/**
 * The block layer on an NVMe controller: request validation (nothing bad
 * reaches the controller), splitting to the transfer limit, one bounce
 * buffer per command ID (a DMA pool per queue, so a command's buffer is
 * known from its ID), registered memory (kit/registered.ts: given to the
 * controller at its bus address, no map per request), and a wait list when
 * every command ID is busy.
 *
 * A request on registered memory through RegisteredBuffer.read()/write()
 * allocates nothing: its state goes in its queue's RegisteredRequests by
 * command ID, and its completion handler is one made per command ID when
 * the queues were.
 */
import type { DmaPool } from '../../pci/dma-pool.js';
import { checkRequest, type BlockOperation } from '../block.js';
import { high32 } from '../kit/bus-address.js';
import { RegisteredBlockDevice, RegisteredRequests, type Registration } from '../kit/registered.js';
import { entryViews } from '../kit/tracker.js';
import { type NvmeController, commandName, statusError } from './controller.js';
import { BlockRequestError, NvmeGoneError } from './errors.js';
import type { CompletionHandler, QueuePair } from './queue.js';
import { NVM, type NamespaceIdentity } from './registers.js';

const OPCODES: Readonly<Record<BlockOperation, number>> = { read: NVM.READ, write: NVM.WRITE, flush: NVM.FLUSH, discard: NVM.DSM };

/** A chunk waiting for a free command ID: run with the queue and the command ID taken for it. */
type Waiter = (q: QueuePair, cid: number) => void;

/** The controller's I/O queues with their bounce pools, shared by its namespaces. */
export class IoQueues {
  readonly data: DmaPool[];
  readonly views: Uint8Array[][];
  /** Per I/O queue: the requests on registered memory by command ID, and one completion handler per command ID. */
  readonly registered: RegisteredRequests[];
  readonly registeredHandlers: CompletionHandler[][];
  private readonly waiting: Waiter[] = [];
  private next = 0;
  /** Its namespaces, whose promise requests abandon() fails. */
  readonly namespaces: NvmeNamespace[] = [];
  /** Fault injection: throw at this many I/O completions (undefined: never). */
  failAt: number | undefined;
  completions = 0;

  constructor(
    readonly controller: NvmeController,
    /** Bytes one command moves at most (and each bounce buffer's size). */
    readonly chunkBytes: number,
  ) {
    this.data = controller.ioQueues.map((q) => controller.tag.createPool({ entrySize: chunkBytes, entries: q.cids.count }));
    this.views = this.data.map((pool) => entryViews(pool));
    this.registered = controller.ioQueues.map((q) => new RegisteredRequests(q.cids.count));
    this.registeredHandlers = controller.ioQueues.map((q, i) => Array.from({ length: q.cids.count }, () => (status: number, _dw0: number, cid: number) => this.registeredDone(q, this.registered[i]!, status, cid)));
  }

  /** A queue with a free command ID, taken in turn; undefined when every one is full. */
  freeQueue(): QueuePair | undefined {
    const queues = this.controller.ioQueues;
    for (let i = 0; i < queues.length; i++) {
      const at = (this.next + i) % queues.length;
      const q = queues[at]!;
      if (q.cids.available > 0) {
        this.next = (at + 1) % queues.length;
        return q;
      }
    }
    return undefined;
  }

  /** A command on registered memory completed (or was cancelled): its registration's end. */
  private registeredDone(q: QueuePair, requests: RegisteredRequests, status: number, cid: number): void {
    if (q.resubmitAborted(cid, status, this.registeredHandlers[q.id - 1]![cid]!, this.controller.options.commandTimeoutMs)) return;
    this.drain();
    requests.end(cid, status === 0 ? undefined : statusError(commandName(false, requests.write[cid] === 1 ? NVM.WRITE : NVM.READ), status, this.controller.options.commandTimeoutMs));
    this.completed();
  }

  /** Runs `issue` on a queue with a free command ID now, or once one frees up. */
  schedule(issue: Waiter): void {
    if ((this.waiting.length === 0 || !this.controller.usable) && this.tryIssue(issue)) return;
    this.waiting.push(issue);
  }

  private tryIssue(issue: Waiter): boolean {
    const q = this.freeQueue();
    if (q === undefined) return false;
    issue(q, q.cids.take());
    return true;
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
    for (const ns of this.namespaces) ns.failPending(() => new NvmeGoneError('I/O', reason));
  }
}

export class NvmeNamespace extends RegisteredBlockDevice {
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
    super({ name, blockSize: identity.blockSize, blockCount: identity.blocks, canDiscard: io.controller.identity.datasetManagement, maxTransferBytes: io.chunkBytes }, io.controller.tag);
    io.namespaces.push(this);
  }

  /** The controller (Identify data, counters, passthrough). */
  get controller(): NvmeController {
    return this.io.controller;
  }

  protected get goneReason(): string | undefined {
    return this.io.controller.usable ? undefined : 'the controller is gone; nothing can be registered with it';
  }

  private refuse(message: string, fix: string): never {
    throw new BlockRequestError(`${this.name}: ${message}`, fix);
  }

  read(lba: number, blocks: number, into?: Uint8Array): Promise<Uint8Array> {
    const refused = this.refusal(() => checkRequest.read(this, lba, blocks, into));
    if (refused !== undefined) return Promise.reject(refused);
    const buffer = into ?? new Uint8Array(blocks * this.blockSize);
    return this.request('read', lba, blocks, buffer).then(() => buffer);
  }

  write(lba: number, data: Uint8Array): Promise<void> {
    const refused = this.refusal(() => checkRequest.write(this, lba, data));
    if (refused !== undefined) return Promise.reject(refused);
    return this.request('write', lba, data.length / this.blockSize, data);
  }

  flush(): Promise<void> {
    return this.request('flush', 0, 0);
  }

  discard(lba: number, blocks: number): Promise<void> {
    const refused = this.refusal(() => {
      if (!this.canDiscard) this.refuse('the controller has no Dataset Management (ONCS bit 2)', 'do not discard on this device');
      checkRequest.discard(this, lba, blocks);
      if (blocks > 0xffffffff) this.refuse(`${blocks} blocks exceed one range's 2^32 - 1`, 'discard in smaller pieces');
    });
    if (refused !== undefined) return Promise.reject(refused);
    return this.request('discard', lba, blocks);
  }

  /** A read or write of registered memory (checked): one command, on a queue with a free command ID, no allocation. */
  protected issueRegistered(registration: Registration, write: boolean, lba: number, blocks: number, offset: number, tag: number): boolean {
    const io = this.io;
    const q = io.freeQueue();
    if (q === undefined) return false;
    const cid = q.cids.take();
    q.prps[0] = registration.mapping.bus + offset;
    q.prp2For(cid, blocks * this.blockSize);
    io.controller.submitTo(q, cid, false, write ? NVM.WRITE : NVM.READ, this.nsid, lba | 0, high32(lba), blocks - 1, 0, io.registeredHandlers[q.id - 1]![cid]!, this.refuseGone);
    this.began(io.registered[q.id - 1]!, cid, registration, write, lba, blocks, tag);
    return true;
  }

  /**
   * One request of the promise API (kit/registered.ts: settled()), as
   * commands on queues with a free command ID, now or once one frees up.
   * Reads and writes go in chunks of at most chunkBytes, given to the
   * controller where they are when in registered memory, else through the
   * command IDs' bounce buffers (one copy), never through a map of their
   * own. A discard is one DSM with its one range in the command's bounce
   * buffer; a flush, one Flush. A command the timeout path aborted is
   * submitted again.
   */
  private request(op: BlockOperation, lba: number, blocks: number, buffer?: Uint8Array): Promise<void> {
    const io = this.io;
    const bs = this.blockSize;
    const data = buffer !== undefined;
    const chunkBlocks = Math.floor(io.chunkBytes / bs);
    const opcode = OPCODES[op];
    const commands = data ? Math.ceil(blocks / chunkBlocks) : 1;
    // PRP1 must be dword-aligned.
    return this.settled(op, lba, blocks, buffer, 4, commands, (finish, direct) => {
      for (let first = 0, chunks = commands; chunks > 0; chunks--, first += chunkBlocks) {
        const n = data ? Math.min(chunkBlocks, blocks - first) : 0;
        const offset = first * bs;
        const bytes = n * bs;
        const slba = lba + first;
        io.schedule((q, cid) => {
          const bounce = io.views[q.id - 1]![cid]!;
          q.prps[0] = direct >= 0 ? direct + offset : op === 'flush' ? 0 : io.data[q.id - 1]!.busAddresses[cid]!;
          if (direct < 0 && op === 'write') bounce.set(buffer!.subarray(offset, offset + bytes));
          if (op === 'discard') {
            // Context attributes, NLB, SLBA.
            const v = new DataView(bounce.buffer, bounce.byteOffset, 16);
            v.setUint32(0, 0, true);
            v.setUint32(4, blocks, true);
            v.setUint32(8, lba >>> 0, true);
            v.setUint32(12, high32(lba), true);
          }
          q.prp2For(cid, bytes);
          const handler = (status: number, _dw0: number, doneCid: number) => {
            if (q.resubmitAborted(doneCid, status, handler, io.controller.options.commandTimeoutMs)) return;
            if (status === 0 && direct < 0 && op === 'read') buffer!.set(bounce.subarray(0, bytes), offset);
            io.drain();
            finish(status === 0 ? undefined : statusError(commandName(false, opcode), status, io.controller.options.commandTimeoutMs));
            io.completed();
          };
          // Read/Write: SLBA, NLB - 1; DSM: one range (NR 0), deallocate (AD, CDW11 bit 2); Flush: none.
          if (data) io.controller.submitTo(q, cid, false, opcode, this.nsid, slba | 0, high32(slba), n - 1, 0, handler, finish);
          else io.controller.submitTo(q, cid, false, opcode, this.nsid, 0, op === 'discard' ? 1 << 2 : 0, 0, 0, handler, finish);
        });
      }
    });
  }

  /**
   * The load generator's path (perf.ts, like SPDK's perf): a read of
   * `blocks` at `lba` into the bounce buffer of the command ID it gets, on
   * I/O queue `queue`, with a handler the caller made once. Returns the
   * command ID, or -1 when the queue is full or the controller gone (then
   * `onError` was called). No validation beyond the range, no promise, no
   * allocation.
   */
  submitRead(queue: number, lba: number, blocks: number, handler: CompletionHandler, onError: (e: Error) => void): number {
    if (!(lba >= 0 && blocks >= 1 && lba + blocks <= this.blockCount && blocks * this.blockSize <= this.io.chunkBytes)) {
      this.refused++;
      this.refuse(`read of ${blocks} blocks at ${lba} is outside the namespace or over ${this.io.chunkBytes} bytes`, 'stay inside the namespace and the transfer limit');
    }
    const q = this.io.controller.ioQueues[queue]!;
    const cid = q.cids.take();
    if (cid < 0) return -1;
    q.prps[0] = this.io.data[q.id - 1]!.busAddresses[cid]!;
    q.prp2For(cid, blocks * this.blockSize);
    return this.io.controller.submitTo(q, cid, false, NVM.READ, this.nsid, lba | 0, high32(lba), blocks - 1, 0, handler, onError) ? cid : -1;
  }
}
