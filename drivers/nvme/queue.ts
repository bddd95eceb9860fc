/**
 * One NVMe submission/completion queue pair: both rings in DMA pools (one
 * allocation each, bus address precomputed), a command ID per free SQ slot,
 * one PRP list page per command ID, doorbells, and the completion phase.
 *
 * The hot path allocates nothing: a command is written straight into the SQ
 * ring's Uint32Array, its completion handler is a function the caller keeps
 * (the block layer's are preallocated per command ID), and reaping reads the
 * CQ ring in place. A copy of each outstanding command stays in `shadow` so
 * a controller reset can submit it again; while the reset runs the queue is
 * held: commands are recorded but reach the ring only once the controller
 * has the queue again (resubmitOutstanding).
 */
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaPool } from '../../pci/dma-pool.js';
import type { DmaTag } from '../../pci/bus-dma.js';
import { CQE_BYTES, PAGE, PRPS_PER_PAGE, REG, SQE_BYTES } from './registers.js';

/** Completion of one command: `status` is CQE DW3 bits 31:17 (SC 7:0, SCT 10:8, DNR 14); 0 is success. */
export type CompletionHandler = (status: number, dw0: number, cid: number) => void;

const WORDS_PER_SQE = SQE_BYTES / 4;
const WORDS_PER_CQE = CQE_BYTES / 4;
const TWO_32 = 2 ** 32;

export class QueuePair {
  readonly sq: DmaPool;
  readonly cq: DmaPool;
  /** One PRP list page per command ID. */
  readonly prpLists: DmaPool;
  private readonly sqWords: Uint32Array;
  private readonly cqWords: Uint32Array;
  private readonly prpWords: Uint32Array;
  /** The outstanding commands as submitted, by command ID. */
  private readonly shadow: Uint32Array;
  private readonly handlers: (CompletionHandler | undefined)[];
  /** When each outstanding command times out (performance.now() ms), 0 when free. */
  readonly deadlines: Float64Array;
  /**
   * PRP1 and PRP2 of the command about to be submitted: the caller sets
   * PRP1 (prps[0]), prp2For() sets PRP2, submit() takes both. Bus
   * addresses pass through this array, not as arguments, because a number
   * argument that is no small integer (an IOVA above 2^31) is a new heap
   * number per call, 16 bytes per I/O; a typed array's slot is not.
   */
  readonly prps = new Float64Array(2);
  /** Per command ID: aborts and resets it went through. */
  readonly retries: Uint8Array;
  /** Per command ID: 1 when it was submitted while the queue was held (not yet in the ring). */
  private readonly unposted: Uint8Array;
  private held = false;
  private readonly freeCids: Int32Array;
  private freeCount: number;
  private sqTail = 0;
  private cqHead = 0;
  private phase = 1;
  private readonly sqDoorbell: number;
  private readonly cqDoorbell: number;
  /** Commands submitted and completed over the queue's life. */
  submitted = 0;
  completed = 0;
  /**
   * Fault injection (test only): this command ID is recorded as submitted
   * but never written to the ring nor its doorbell rung, as if the doorbell
   * write were lost, so only the timeout path can complete it; -1: none.
   */
  dropCid = -1;
  /** Fault injection: dropCid's re-issues after a reset are dropped too (a command the controller never completes). */
  dropResubmissions = false;

  constructor(
    private readonly bar: BusSpace,
    tag: DmaTag,
    /** 0 for the admin queue. */
    readonly id: number,
    /** Entries per ring; depth - 1 commands can be outstanding. */
    readonly depth: number,
    doorbellStride: number,
    /** The interrupt vector its CQ signals, or -1 (polled). */
    readonly vector: number,
  ) {
    this.sq = tag.createPool({ entrySize: depth * SQE_BYTES, entries: 1, access: 'read' });
    this.cq = tag.createPool({ entrySize: depth * CQE_BYTES, entries: 1, access: 'write' });
    this.prpLists = tag.createPool({ entrySize: PAGE, entries: depth - 1, access: 'read' });
    this.sqWords = new Uint32Array(this.sq.buffer, 0, depth * WORDS_PER_SQE);
    this.cqWords = new Uint32Array(this.cq.buffer, 0, depth * WORDS_PER_CQE);
    this.prpWords = new Uint32Array(this.prpLists.buffer);
    this.shadow = new Uint32Array(depth * WORDS_PER_SQE);
    this.handlers = new Array<CompletionHandler | undefined>(depth - 1).fill(undefined);
    this.deadlines = new Float64Array(depth - 1);
    this.retries = new Uint8Array(depth - 1);
    this.unposted = new Uint8Array(depth - 1);
    this.freeCids = new Int32Array(depth - 1);
    for (let i = 0; i < depth - 1; i++) this.freeCids[i] = depth - 2 - i;
    this.freeCount = depth - 1;
    this.sqDoorbell = REG.DOORBELLS + 2 * id * doorbellStride;
    this.cqDoorbell = REG.DOORBELLS + (2 * id + 1) * doorbellStride;
  }

  get sqBusAddress(): number {
    return this.sq.busAddresses[0]!;
  }

  get cqBusAddress(): number {
    return this.cq.busAddresses[0]!;
  }

  /** Commands submitted and not completed. */
  get outstanding(): number {
    return this.depth - 1 - this.freeCount;
  }

  /** A free command ID, or -1 when the queue is full. */
  allocCid(): number {
    return this.freeCount === 0 ? -1 : this.freeCids[--this.freeCount]!;
  }

  /** Gives back a command ID that was allocated and never submitted. */
  freeCid(cid: number): void {
    this.freeCids[this.freeCount++] = cid;
  }

  /**
   * PRP entries for bus range [prps[0], prps[0] + length), contiguous in
   * bus addresses, as nvme_pcie_prp_list_append builds them: PRP1 is the
   * first byte (dword aligned), then one entry per further page, in PRP2
   * directly when there is one, else in this command ID's PRP list page.
   * Sets prps[1] to PRP2.
   */
  prp2For(cid: number, length: number): void {
    const bus = this.prps[0]!;
    const first = PAGE - (bus % PAGE);
    this.prps[1] = 0;
    if (length <= first) return;
    const rest = length - first;
    const next = bus + first;
    if (rest <= PAGE) {
      this.prps[1] = next;
      return;
    }
    const pages = Math.ceil(rest / PAGE);
    if (pages > PRPS_PER_PAGE) throw new RangeError(`nvme: ${length} bytes need ${pages} PRP entries; one list page holds ${PRPS_PER_PAGE}`);
    let w = cid * (PAGE / 4);
    for (let i = 0; i < pages; i++) {
      const a = next + i * PAGE;
      this.prpWords[w++] = a >>> 0;
      this.prpWords[w++] = Math.floor(a / TWO_32);
    }
    this.prps[1] = this.prpLists.busAddresses[cid]!;
  }

  /**
   * Writes the command at the SQ tail, with `prps` as its PRP1 and PRP2,
   * and rings the doorbell; it times out at `deadlines[cid]`, which the
   * caller sets.
   */
  submit(cid: number, opcode: number, nsid: number, cdw10: number, cdw11: number, cdw12: number, cdw13: number, handler: CompletionHandler): void {
    const prp1 = this.prps[0]!;
    const prp2 = this.prps[1]!;
    const s = cid * WORDS_PER_SQE;
    const w = this.shadow;
    w[s] = opcode | (cid << 16);
    w[s + 1] = nsid;
    w[s + 2] = 0;
    w[s + 3] = 0;
    w[s + 4] = 0;
    w[s + 5] = 0;
    w[s + 6] = prp1 >>> 0;
    w[s + 7] = Math.floor(prp1 / TWO_32);
    w[s + 8] = prp2 >>> 0;
    w[s + 9] = Math.floor(prp2 / TWO_32);
    w[s + 10] = cdw10;
    w[s + 11] = cdw11;
    w[s + 12] = cdw12;
    w[s + 13] = cdw13;
    w[s + 14] = 0;
    w[s + 15] = 0;
    this.handlers[cid] = handler;
    this.retries[cid] = 0;
    this.post(cid);
  }

  /** Copies command `cid` from the shadow to the SQ tail and rings the doorbell (held: later, by resubmitOutstanding). */
  private post(cid: number): void {
    if (this.held) {
      this.unposted[cid] = 1;
      return;
    }
    if (cid === this.dropCid) {
      if (!this.dropResubmissions) this.dropCid = -1;
      return;
    }
    const from = cid * WORDS_PER_SQE;
    const to = this.sqTail * WORDS_PER_SQE;
    for (let i = 0; i < WORDS_PER_SQE; i++) this.sqWords[to + i] = this.shadow[from + i]!;
    this.sqTail = this.sqTail + 1 === this.depth ? 0 : this.sqTail + 1;
    this.submitted++;
    this.bar.write4(this.sqDoorbell, this.sqTail);
  }

  /** Opcode of an outstanding command, for messages. */
  opcodeOf(cid: number): number {
    return this.shadow[cid * WORDS_PER_SQE]! & 0xff;
  }

  /**
   * Handles every new completion, then tells the controller how far the CQ
   * was read. Returns how many there were. A handler that throws leaves the
   * queue consistent (its entry consumed, the head doorbell written).
   */
  reap(): number {
    let n = 0;
    try {
      for (;;) {
        const at = this.cqHead * WORDS_PER_CQE;
        const dw3 = Atomics.load(this.cqWords, at + 3);
        if (((dw3 >>> 16) & 1) !== this.phase) break;
        const dw0 = this.cqWords[at]!;
        this.cqHead++;
        if (this.cqHead === this.depth) {
          this.cqHead = 0;
          this.phase ^= 1;
        }
        n++;
        const cid = dw3 & 0xffff;
        const handler = this.handlers[cid];
        if (handler === undefined) continue; // a completion for nothing outstanding (after a reset): ignored
        this.handlers[cid] = undefined;
        this.deadlines[cid] = 0;
        this.freeCids[this.freeCount++] = cid;
        this.completed++;
        handler(dw3 >>> 17, dw0, cid);
      }
    } finally {
      if (n > 0) this.bar.write4(this.cqDoorbell, this.cqHead);
    }
    return n;
  }

  /** Completes command `cid` without the controller (a timeout or a reset gave up on it). */
  cancel(cid: number, status: number): void {
    const handler = this.handlers[cid];
    if (handler === undefined) return;
    this.handlers[cid] = undefined;
    this.deadlines[cid] = 0;
    this.unposted[cid] = 0;
    if (cid === this.dropCid) this.dropCid = -1;
    this.freeCids[this.freeCount++] = cid;
    handler(status, 0, cid);
  }

  /** The first command ID whose deadline has passed at `now`, or -1. */
  firstExpired(now: number): number {
    for (let cid = 0; cid < this.depth - 1; cid++) {
      const deadline = this.deadlines[cid]!;
      if (deadline !== 0 && deadline <= now) return cid;
    }
    return -1;
  }

  /** Command IDs outstanding now. */
  outstandingCids(): number[] {
    const ids: number[] = [];
    for (let cid = 0; cid < this.depth - 1; cid++) if (this.handlers[cid] !== undefined) ids.push(cid);
    return ids;
  }

  /** From a controller reset's start: submissions are recorded, not posted, until resubmitOutstanding. */
  hold(): void {
    this.held = true;
  }

  /** After a controller reset: empty rings (the outstanding commands stay, for resubmitOutstanding). */
  restart(): void {
    this.sqTail = 0;
    this.cqHead = 0;
    this.phase = 1;
    this.cqWords.fill(0);
  }

  /**
   * Once the queue exists in the controller again: submits every
   * outstanding command (again, counted as a retry; or for the first time,
   * when it came while the queue was held): how many of each.
   */
  resubmitOutstanding(deadline: number): { again: number; held: number } {
    this.held = false;
    let again = 0;
    let held = 0;
    for (const cid of this.outstandingCids()) {
      if (this.unposted[cid] === 1) {
        this.unposted[cid] = 0;
        held++;
      } else {
        this.retries[cid]!++;
        again++;
      }
      this.deadlines[cid] = deadline;
      this.post(cid);
    }
    return { again, held };
  }

  /** Submits one outstanding command again (its abort completed it). */
  resubmit(cid: number, handler: CompletionHandler, deadline: number): void {
    // Its ID was released when it completed: take it again.
    for (let i = 0; i < this.freeCount; i++) {
      if (this.freeCids[i] === cid) {
        this.freeCids[i] = this.freeCids[--this.freeCount]!;
        break;
      }
    }
    const retries = this.retries[cid]!;
    this.handlers[cid] = handler;
    this.deadlines[cid] = deadline;
    this.retries[cid] = retries + 1;
    this.post(cid);
  }

  free(): void {
    this.sq.free();
    this.cq.free();
    this.prpLists.free();
  }
}
