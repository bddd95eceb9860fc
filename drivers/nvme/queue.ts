/**
 * One NVMe submission/completion queue pair on the driver kit: the SQ and
 * CQ are DescriptorRings (the CQ wrapping at twice its size for the phase
 * tag), command IDs are Trackers (taken and given back in any order), and
 * each command ID has its PRP list page, bus address computed once.
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
import { high32, storeBus64 } from '../kit/bus-address.js';
import { DescriptorRing } from '../kit/ring.js';
import { Trackers } from '../kit/tracker.js';
import { SC_ABORT_REQUESTED } from './errors.js';
import { CQE_BYTES, PAGE, PRPS_PER_PAGE, REG, SQE_BYTES } from './registers.js';

/** Completion of one command: `status` is CQE DW3 bits 31:17 (SC 7:0, SCT 10:8, DNR 14); 0 is success. */
export type CompletionHandler = (status: number, dw0: number, cid: number) => void;

const WORDS_PER_SQE = SQE_BYTES / 4;
const WORDS_PER_CQE = CQE_BYTES / 4;

export class QueuePair {
  readonly sq: DescriptorRing;
  /** Wraps at twice its size: the head's pass is the phase tag. */
  readonly cq: DescriptorRing;
  /** The command IDs: depth - 1 of them, as depth - 1 commands can be outstanding. */
  readonly cids: Trackers;
  /** One PRP list page per command ID. */
  readonly prpLists: DmaPool;
  private readonly prpWords: Uint32Array;
  /** The outstanding commands as submitted, by command ID. */
  private readonly shadow: Uint32Array;
  private readonly handlers: (CompletionHandler | undefined)[];
  /** When each outstanding command times out (performance.now() ms), 0 when free. */
  readonly deadlines: Float64Array;
  /**
   * PRP1 and PRP2 of the command about to be submitted: the caller sets
   * PRP1 (prps[0]), prp2For() sets PRP2, submit() takes both. Bus
   * addresses pass through this array, not as arguments (kit/bus-address.ts).
   */
  readonly prps = new Float64Array(2);
  /** Per command ID: aborts and resets it went through. */
  readonly retries: Uint8Array;
  /** Per command ID: 1 when it was submitted while the queue was held (not yet in the ring). */
  private readonly unposted: Uint8Array;
  private held = false;
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
    bar: BusSpace,
    tag: DmaTag,
    /** 0 for the admin queue. */
    readonly id: number,
    /** Entries per ring; depth - 1 commands can be outstanding. */
    readonly depth: number,
    doorbellStride: number,
    /** The interrupt vector its CQ signals, or -1 (polled). */
    readonly vector: number,
  ) {
    this.sq = new DescriptorRing(tag, depth, SQE_BYTES, 'read', depth, { space: bar, offset: REG.DOORBELLS + 2 * id * doorbellStride });
    this.cq = new DescriptorRing(tag, depth, CQE_BYTES, 'write', 2 * depth, { space: bar, offset: REG.DOORBELLS + (2 * id + 1) * doorbellStride });
    this.cids = new Trackers(depth - 1);
    this.prpLists = tag.createPool({ entrySize: PAGE, entries: depth - 1, access: 'read' });
    this.prpWords = new Uint32Array(this.prpLists.buffer);
    this.shadow = new Uint32Array(depth * WORDS_PER_SQE);
    this.handlers = new Array<CompletionHandler | undefined>(depth - 1).fill(undefined);
    this.deadlines = new Float64Array(depth - 1);
    this.retries = new Uint8Array(depth - 1);
    this.unposted = new Uint8Array(depth - 1);
  }

  /** Commands submitted and not completed. */
  get outstanding(): number {
    return this.cids.outstanding;
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
      this.prpWords[w++] = high32(a);
    }
    this.prps[1] = this.prpLists.busAddresses[cid]!;
  }

  /**
   * Writes the command at the SQ tail, with `prps` as its PRP1 and PRP2,
   * and rings the doorbell; it times out at `deadlines[cid]`, which the
   * caller sets.
   */
  submit(cid: number, opcode: number, nsid: number, cdw10: number, cdw11: number, cdw12: number, cdw13: number, handler: CompletionHandler): void {
    const s = cid * WORDS_PER_SQE;
    const w = this.shadow;
    w[s] = opcode | (cid << 16);
    w[s + 1] = nsid;
    w.fill(0, s + 2, s + 6); // CDW2-3 reserved, MPTR: no metadata
    storeBus64(w, s + 6, this.prps, 0);
    storeBus64(w, s + 8, this.prps, 1);
    w[s + 10] = cdw10;
    w[s + 11] = cdw11;
    w[s + 12] = cdw12;
    w[s + 13] = cdw13;
    w.fill(0, s + 14, s + 16);
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
    const to = this.sq.push() * WORDS_PER_SQE;
    for (let i = 0; i < WORDS_PER_SQE; i++) this.sq.words[to + i] = this.shadow[from + i]!;
    this.submitted++;
    this.sq.ringTail();
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
        const at = this.cq.headSlot * WORDS_PER_CQE;
        const dw3 = Atomics.load(this.cq.words, at + 3);
        if (((dw3 >>> 16) & 1) !== this.cq.phase) break;
        const dw0 = this.cq.words[at]!;
        this.cq.shift();
        n++;
        const cid = dw3 & 0xffff;
        const handler = this.release(cid);
        if (handler === undefined) continue; // a completion for nothing outstanding (after a reset): ignored
        this.completed++;
        handler(dw3 >>> 17, dw0, cid);
      }
    } finally {
      if (n > 0) this.cq.ringHead();
    }
    return n;
  }

  /** Completes command `cid` without the controller (a timeout or a reset gave up on it). */
  cancel(cid: number, status: number): void {
    const handler = this.release(cid);
    if (handler === undefined) return;
    this.unposted[cid] = 0;
    if (cid === this.dropCid) this.dropCid = -1;
    handler(status, 0, cid);
  }

  /** Ends outstanding command `cid` (its ID given back): its handler, or undefined when nothing is outstanding under it. */
  private release(cid: number): CompletionHandler | undefined {
    const handler = this.handlers[cid];
    if (handler === undefined) return undefined;
    this.handlers[cid] = undefined;
    this.deadlines[cid] = 0;
    this.cids.give(cid);
    return handler;
  }

  /** The first command ID whose deadline has passed at `now`, or -1. */
  firstExpired(now: number): number {
    for (let cid = 0; cid < this.depth - 1; cid++) {
      const deadline = this.deadlines[cid]!;
      if (deadline !== 0 && deadline <= now) return cid;
    }
    return -1;
  }

  /** From a controller reset's start: submissions are recorded, not posted, until resubmitOutstanding. */
  hold(): void {
    this.held = true;
  }

  /** After a controller reset: empty rings (the outstanding commands stay, for resubmitOutstanding). */
  restart(): void {
    this.sq.reset();
    this.cq.reset();
    this.cq.words.fill(0);
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
    for (const cid of this.cids.takenIds()) {
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

  /**
   * Submits command `cid` again when `status` is an Abort the timeout path
   * asked for and it was not re-issued yet, timing out `timeoutMs` from
   * now; false when its completion stands (the caller handles it).
   */
  resubmitAborted(cid: number, status: number, handler: CompletionHandler, timeoutMs: number): boolean {
    if ((status & 0x7ff) !== SC_ABORT_REQUESTED || this.retries[cid]! >= 2) return false;
    // Its ID was given back when it completed: take it again.
    this.cids.takeId(cid);
    this.handlers[cid] = handler;
    this.deadlines[cid] = performance.now() + timeoutMs;
    this.retries[cid]!++;
    this.post(cid);
    return true;
  }
}
