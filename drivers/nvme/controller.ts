/**
 * An NVMe controller: reset and enable (bounded by CAP.TO), the admin queue,
 * Identify, Set Features (number of queues), I/O queue pairs, command
 * timeouts (Abort, then a controller reset that submits every outstanding
 * command again; a second reset fails the command), and shutdown (CC.SHN).
 * The block layer (namespace.ts) submits through ioQueue(); completions are
 * reaped by interrupts (one vector per queue when MSI-X has enough, else
 * shared) or by polling.
 */
import type { DriverDma, DmaTag } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DriverBus, DriverVector } from '../contract.js';
import { Poller } from '../kit/poller.js';
import type { DriverTimers } from '../kit/timers.js';
import { NvmeGoneError, NvmeStatusError, NvmeTimeoutError } from './errors.js';
import { writeRegister64 } from '../kit/bus-address.js';
import { QueuePair, type CompletionHandler } from './queue.js';
import {
  ADMIN, CC, CNS, CSTS, FEATURE, PAGE, REG, decodeCap, decodeIdentifyController, decodeIdentifyNamespace, decodeNamespaceList,
  type Capabilities, type ControllerIdentity, type NamespaceIdentity,
} from './registers.js';

/** What the controller gets of its bus: where it notes and faults, its timers, and the vectors it established (none: polled). */
export interface ControllerBus extends Pick<DriverBus, 'note' | 'fault'> {
  readonly timers: DriverTimers;
  readonly vectors: readonly DriverVector[];
}

export interface ControllerOptions {
  readonly ioQueues: number;
  readonly queueDepth: number;
  readonly adminDepth: number;
  readonly commandTimeoutMs: number;
  /** Interrupt vectors established (0: polled only). */
  readonly vectors: number;
}

const OPCODE_NAMES: Record<string, string> = { a0: 'Delete I/O SQ', a1: 'Create I/O SQ', a4: 'Delete I/O CQ', a5: 'Create I/O CQ', a6: 'Identify', a8: 'Abort', a9: 'Set Features', i0: 'Flush', i1: 'Write', i2: 'Read', i9: 'Dataset Management' };
export const commandName = (admin: boolean, opcode: number) => OPCODE_NAMES[`${admin ? 'a' : 'i'}${opcode.toString(16)}`] ?? `${admin ? 'admin' : 'I/O'} opcode 0x${opcode.toString(16)}`;

/** Synthetic statuses for commands the driver completes itself. */
export const STATUS_GONE = 0x7fff;
const STATUS_TIMED_OUT = 0x7ffe;

/** The typed error for a completion status; `timeoutMs` is the controller's command timeout (for a timed-out command's message). */
export function statusError(command: string, status: number, timeoutMs: number): Error {
  if (status === STATUS_GONE) return new NvmeGoneError(command, 'the controller was reset or the driver detached before it completed');
  if (status === STATUS_TIMED_OUT) return new NvmeTimeoutError(command, timeoutMs, 'an Abort did not complete it, nor its re-issue after a controller reset; a second reset gave up on it');
  return new NvmeStatusError(command, (status >>> 8) & 0x7, status & 0xff, (status & 0x4000) !== 0);
}

export class NvmeController {
  readonly cap: Capabilities;
  identity!: ControllerIdentity;
  namespaceIds: number[] = [];
  readonly tag: DmaTag;
  private admin!: QueuePair;
  /** The I/O queue pairs (the block layer picks one per request). */
  readonly ioQueues: QueuePair[] = [];
  /** Queues per interrupt vector (-1: none), with the poller that switches them between polling and interrupts. */
  private readonly byVector = new Map<number, { readonly queues: QueuePair[]; readonly poller: Poller }>();
  /** Each queue's poller, by queue id (looked up per submission: an array, not a map). */
  private readonly pollers: Poller[] = [];
  private identifyPage!: { pool: import('../../pci/dma-pool.js').DmaPool; view: Uint8Array };
  private gone: string | undefined;
  private resetting: Promise<void> | undefined;
  /** The last Identify, which the next one waits for. */
  private identifying: Promise<unknown> = Promise.resolve();
  /**
   * performance.now() at the last timeout check (or admin command, or
   * reset): what an I/O command's deadline counts from. Reading the clock
   * per command makes a heap number per I/O (16 bytes: performance.now()
   * and Date.now() alike); this is read from a typed array instead, and is
   * at most a check period old (checkTimeouts() gives the commands
   * submitted while the event loop was held up longer a full timeout).
   */
  private readonly checkedAt = new Float64Array(1);
  /** performance.now() at the last timeout check: a longer gap than two periods means the event loop was held up. */
  private lastCheck = 0;
  /** When the running reset started (performance.now() ms). */
  private resetStarted = 0;
  /** Controller resets the timeout path did, Aborts it sent, commands it failed with NvmeTimeoutError. */
  resets = 0;
  aborts = 0;
  timedOut = 0;
  /**
   * Fault injection (test only): the Nth I/O command is dropped
   * (QueuePair.dropCid), and the Nth admin command counted from when
   * dropAdminSubmission is set (the driver sets it after attach); 0: none.
   */
  dropSubmission = 0;
  dropResubmissions = false;
  dropAdminSubmission = 0;
  private ioSubmissions = 0;
  private adminSubmissions = 0;

  constructor(
    private readonly bar: BusSpace,
    private readonly dma: DriverDma,
    readonly options: ControllerOptions,
    /** Timeouts, Aborts and resets are noted there; a throw while reaping or a reset that cannot finish is its fault (the host resets and restarts the driver). */
    private readonly bus: ControllerBus,
  ) {
    this.cap = decodeCap(bar.read4(REG.CAP), bar.read4(REG.CAP + 4));
    if (!this.cap.nvmCommandSet) throw new Error('nvme: the controller does not support the NVM command set (CAP.CSS)');
    if (this.cap.minPageSize > PAGE) throw new Error(`nvme: the controller's smallest memory page is ${this.cap.minPageSize} bytes; the driver uses 4 KiB`);
    // Queues and PRP lists are page-aligned, physically contiguous to the device.
    this.tag = dma.createTag({ alignment: PAGE, addressLimit: 2n ** 53n - 1n });
    this.checkedAt[0] = performance.now();
    this.lastCheck = this.checkedAt[0];
  }

  /** How often the driver calls checkTimeouts(): a quarter of the command timeout, at least 10 ms. */
  get timeoutCheckMs(): number {
    return Math.max(10, Math.floor(this.options.commandTimeoutMs / 4));
  }

  /** CC.EN = 0, then wait for CSTS.RDY = 0 (bounded by CAP.TO). */
  private async disable(): Promise<void> {
    const cc = this.bar.read4(REG.CC);
    if ((cc & CC.EN) !== 0) this.bar.write4(REG.CC, cc & ~CC.EN);
    await this.waitReady(false, 'disable');
  }

  private async waitReady(ready: boolean, what: string): Promise<void> {
    const limit = Math.max(this.cap.readyTimeoutMs, 500);
    const deadline = performance.now() + limit;
    for (;;) {
      const csts = this.bar.read4(REG.CSTS);
      if (csts === 0xffffffff) throw new Error(`nvme: CSTS reads all-ones during ${what}: the controller is gone`);
      if (ready && (csts & CSTS.CFS) !== 0) throw new Error(`nvme: controller fatal status (CSTS.CFS) during ${what}`);
      if (((csts & CSTS.RDY) !== 0) === ready) return;
      if (performance.now() > deadline) throw new Error(`nvme: CSTS.RDY did not become ${ready ? 1 : 0} within ${limit} ms (CAP.TO) during ${what}`);
      await this.bus.timers.sleep(1);
    }
  }

  /** Reset, admin queue, enable, Identify, number of queues, I/O queue pairs. */
  async start(): Promise<void> {
    await this.disable();
    this.admin = this.queuePair(0, Math.min(this.options.adminDepth, this.cap.maxQueueEntries));
    const pool = this.tag.createPool({ entrySize: PAGE, entries: 1, access: 'write' });
    this.identifyPage = { pool, view: new Uint8Array(pool.buffer, 0, PAGE) };
    // The device may now reach its rings: they are loaded.
    this.dma.enableBusMaster();
    await this.enable();
    this.identity = decodeIdentifyController(await this.identify(CNS.CONTROLLER, 0), this.cap.minPageSize);
    this.namespaceIds = decodeNamespaceList(await this.identify(CNS.ACTIVE_NAMESPACES, 0));
    const wanted = this.options.ioQueues;
    const granted = await this.adminCommand(ADMIN.SET_FEATURES, 0, 0, 0, FEATURE.NUMBER_OF_QUEUES, ((wanted - 1) << 16) | (wanted - 1), 0);
    const count = Math.min(wanted, (granted & 0xffff) + 1, (granted >>> 16) + 1);
    const depth = Math.min(this.options.queueDepth, this.cap.maxQueueEntries);
    for (let q = 1; q <= count; q++) this.ioQueues.push(this.queuePair(q, depth));
    for (const q of this.ioQueues) await this.createIoQueue(q);
  }

  /**
   * Queue pair `id` on its own vector when there are enough (else vector 0;
   * none: polled), under its vector's poller (one per vector, and one for
   * the queues without: kit/poller.ts). Every poller polls while the driver
   * attaches, with its vector masked (no interrupt subscriber yet);
   * interruptsStarted() switches those with a vector to interrupts.
   */
  private queuePair(id: number, depth: number): QueuePair {
    const vectors = this.options.vectors;
    const q = new QueuePair(this.bar, this.tag, id, depth, this.cap.doorbellStride, vectors === 0 ? -1 : vectors > id ? id : 0);
    let group = this.byVector.get(q.vector);
    if (group === undefined) {
      const queues: QueuePair[] = [];
      const pass = (): boolean => {
        let busy = false;
        for (let i = 0; i < queues.length; i++) {
          queues[i]!.reap();
          if (queues[i]!.outstanding > 0) busy = true;
        }
        return busy && this.gone === undefined;
      };
      const vector = q.vector < 0 ? undefined : this.bus.vectors[q.vector];
      const poller = new Poller({ timers: this.bus.timers, pass, fault: (e) => this.bus.fault(e), mode: 'polling', ...(vector === undefined ? {} : { vector }) });
      group = { queues, poller };
      this.byVector.set(q.vector, group);
    }
    group.queues.push(q);
    this.pollers[q.id] = group.poller;
    return q;
  }

  private async enable(): Promise<void> {
    const depth = this.admin.depth;
    this.bar.write4(REG.AQA, ((depth - 1) << 16) | (depth - 1));
    writeRegister64(this.bar, REG.ASQ, this.admin.sq.bus);
    writeRegister64(this.bar, REG.ACQ, this.admin.cq.bus);
    this.bar.write4(REG.CC, CC.EN | CC.CSS_NVM | CC.MPS_4K | CC.AMS_RR | CC.IOSQES | CC.IOCQES);
    await this.waitReady(true, 'enable');
    // Polled: mask every vector in the controller. Without MSI-X the admin CQ would otherwise
    // assert INTx with no handler, and the kernel disables the (shared) line: "nobody cared".
    if (this.options.vectors === 0) this.bar.write4(REG.INTMS, 0xffffffff);
  }

  private async createIoQueue(q: QueuePair): Promise<void> {
    const ien = q.vector >= 0 ? 1 << 1 : 0;
    await this.adminCommand(ADMIN.CREATE_CQ, 0, q.cq.bus, 0, ((q.depth - 1) << 16) | q.id, (Math.max(q.vector, 0) << 16) | ien | 1, 0);
    await this.adminCommand(ADMIN.CREATE_SQ, 0, q.sq.bus, 0, ((q.depth - 1) << 16) | q.id, (q.id << 16) | 1, 0);
  }

  /** Identify data (a copy). One at a time: they share one DMA page (a caller's Identify during attach once garbled a namespace's). */
  identify(cns: number, nsid: number): Promise<Uint8Array> {
    const data = this.identifying.then(async () => {
      this.identifyPage.view.fill(0);
      await this.adminCommand(ADMIN.IDENTIFY, nsid, this.identifyPage.pool.busAddresses[0]!, 0, cns, 0, 0);
      this.identifyPage.pool.sync(0x02, 0);
      return this.identifyPage.view.slice();
    });
    this.identifying = data.catch(() => undefined);
    return data;
  }

  async identifyNamespace(nsid: number): Promise<NamespaceIdentity> {
    return decodeIdentifyNamespace(await this.identify(CNS.NAMESPACE, nsid));
  }

  /** An admin command, resolved with its completion's DW0; polled while the driver is attaching (no interrupt subscriber yet), by interrupt after. */
  adminCommand(opcode: number, nsid: number, prp1: number, prp2: number, cdw10: number, cdw11: number, cdw12: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      // Not the I/O path: the deadline counts from now.
      this.checkedAt[0] = performance.now();
      const cid = this.admin.cids.take();
      if (cid < 0) {
        reject(new Error(`nvme: ${commandName(true, opcode)}: all ${this.admin.cids.count} admin command IDs are outstanding`));
        return;
      }
      this.admin.prps[0] = prp1;
      this.admin.prps[1] = prp2;
      this.submitTo(this.admin, cid, true, opcode, nsid, cdw10, cdw11, cdw12, 0, (status, dw0) => {
        if (status === 0) resolve(dw0);
        else reject(statusError(commandName(true, opcode), status, this.options.commandTimeoutMs));
      }, reject);
    });
  }

  /** Whether the controller takes commands (not detached, not failed). */
  get usable(): boolean {
    return this.gone === undefined;
  }

  /**
   * Submits on `q` as command `cid` (taken from q.cids by the caller, its
   * PRPs set in q.prps): true, or false when the controller is gone (the
   * command ID is given back and `onError` called).
   */
  submitTo(
    q: QueuePair, cid: number, admin: boolean, opcode: number, nsid: number, cdw10: number, cdw11: number, cdw12: number, cdw13: number, handler: CompletionHandler, onError: (e: Error) => void,
  ): boolean {
    if (this.gone !== undefined) {
      q.cids.give(cid);
      onError(new NvmeGoneError(commandName(admin, opcode), this.gone));
      return false;
    }
    if (admin ? this.dropAdminSubmission > 0 && ++this.adminSubmissions === this.dropAdminSubmission : ++this.ioSubmissions === this.dropSubmission) {
      q.dropCid = cid;
      q.dropResubmissions = !admin && this.dropResubmissions;
      // The fault injection's record: which command it dropped (an I/O command's LBA is CDW11:CDW10).
      const lba = admin ? '' : `, LBA ${(BigInt(cdw11 >>> 0) << 32n) | BigInt(cdw10 >>> 0)}`;
      this.bus.note(`fault injection: dropping ${commandName(admin, opcode)} (command ${cid} on queue ${q.id})${lba}`);
    }
    q.submit(cid, opcode, nsid, cdw10, cdw11, cdw12, cdw13, handler);
    // A check period late at most (checkedAt is up to a period old), never early.
    q.deadlines[cid] = this.checkedAt[0]! + this.options.commandTimeoutMs + this.timeoutCheckMs;
    this.pollers[q.id]!.kick();
    return true;
  }

  // --- completions -------------------------------------------------------

  /** The driver's interrupt handlers are subscribed: the queues with a vector are reaped by interrupts from now on. */
  interruptsStarted(): void {
    for (const [vector, { poller }] of this.byVector) if (vector >= 0) poller.interrupts();
  }

  /** Reaps every queue on `vector` (an interrupt arrived); indexed, as a for-of makes an iterator per interrupt. */
  onInterrupt(vector: number): void {
    const queues = this.byVector.get(vector)?.queues;
    if (queues !== undefined) for (let i = 0; i < queues.length; i++) queues[i]!.reap();
  }

  // --- timeouts ----------------------------------------------------------

  /**
   * Called periodically: a command past its deadline gets an Abort; one
   * still outstanding past the next deadline (or whose Abort failed) makes
   * the controller reset, which submits every outstanding command again; a
   * re-issued command past its deadline makes a second reset, which fails
   * it with NvmeTimeoutError instead (the controller is stopped then, so
   * its command ID and buffer can be reused safely). An admin command past
   * its deadline makes a reset (which fails it with NvmeGoneError); one the
   * reset itself submitted is a driver fault, as the reset cannot finish:
   * the host resets the device and restarts the driver.
   */
  checkTimeouts(now: number): void {
    if (this.gone !== undefined) return;
    const timeout = this.options.commandTimeoutMs;
    const heldUp = now - this.lastCheck > 2 * this.timeoutCheckMs;
    this.lastCheck = now;
    this.checkedAt[0] = now;
    if (heldUp) {
      // The event loop was held up: commands submitted meanwhile counted from an old checkedAt; none is judged before a full timeout from now.
      for (const q of [this.admin, ...this.ioQueues]) {
        for (let cid = 0; cid < q.depth - 1; cid++) if (q.deadlines[cid] !== 0) q.deadlines[cid] = Math.max(q.deadlines[cid]!, now + timeout);
      }
      return;
    }
    const stuck = this.admin.firstExpired(now);
    const stuckName = stuck < 0 ? '' : `${commandName(true, this.admin.opcodeOf(stuck))} (admin command ${stuck})`;
    if (this.resetting !== undefined) {
      // Only the reset's own commands (submitted after it started): the older ones go with the old admin queue.
      if (stuck >= 0 && this.admin.deadlines[stuck]! > this.resetStarted + timeout) {
        this.admin.deadlines[stuck] = 0; // one fault
        this.bus.fault(new NvmeTimeoutError(stuckName, timeout, 'the controller reset waiting for it cannot finish'));
      }
      return;
    }
    if (stuck >= 0) {
      this.recover(`${stuckName} not completed within ${timeout} ms`);
      return;
    }
    for (const q of this.ioQueues) {
      for (let cid = 0; cid < q.depth - 1; cid++) {
        const deadline = q.deadlines[cid]!;
        if (deadline === 0 || deadline > now) continue;
        const what = `${commandName(false, q.opcodeOf(cid))} (command ${cid} on queue ${q.id})`;
        if (q.retries[cid] === 0) {
          q.retries[cid] = 1;
          q.deadlines[cid] = now + timeout;
          this.aborts++;
          this.bus.note(`${what} not completed within ${timeout} ms: Abort sent`);
          this.adminCommand(ADMIN.ABORT, 0, 0, 0, (cid << 16) | q.id, 0, 0).then(
            // Abort's DW0 bit 0: 1 when the controller did not abort the command.
            (dw0) => this.bus.note(`Abort of ${what}: ${(dw0 & 1) === 0 ? 'aborted' : 'not aborted by the controller'}`),
            (e: unknown) => this.recover(`the Abort of ${what} failed: ${e instanceof Error ? e.message : String(e)}`),
          );
          continue;
        }
        this.recover(`${what} ${q.retries[cid] === 1 ? 'not completed after an Abort' : 'not completed after its re-issue'}`);
        return;
      }
    }
  }

  /** A reset from the timeout path; a reset that fails is a driver fault (the host restarts the driver, which resets the device). */
  private recover(reason: string): void {
    this.reset(reason).catch((e: unknown) => {
      if (this.gone === undefined) this.bus.fault(e);
    });
  }

  /**
   * Controller reset and re-issue: hold the I/O queues (what is submitted
   * meanwhile waits), disable, handle what the controller completed before
   * it stopped (as Linux's nvme_reap_pending_cqes), enable with the same
   * rings, create the I/O queues again, fail the commands that had been
   * re-issued once already and timed out again, submit every other
   * outstanding command again.
   */
  reset(reason: string): Promise<void> {
    this.resetting ??= (async () => {
      const started = performance.now();
      this.resetStarted = started;
      this.resets++;
      this.bus.note(`controller reset: ${reason}`);
      for (const q of this.ioQueues) q.hold();
      await this.disable();
      for (const q of [this.admin, ...this.ioQueues]) q.reap();
      for (const q of [this.admin, ...this.ioQueues]) q.restart();
      // Admin commands outstanding across the reset are lost with the old admin queue.
      for (const cid of this.admin.cids.takenIds()) this.admin.cancel(cid, STATUS_GONE);
      await this.enable();
      await this.adminCommand(ADMIN.SET_FEATURES, 0, 0, 0, FEATURE.NUMBER_OF_QUEUES, ((this.ioQueues.length - 1) << 16) | (this.ioQueues.length - 1), 0);
      const deadline = performance.now() + this.options.commandTimeoutMs;
      let again = 0;
      let held = 0;
      let failed = 0;
      for (const q of this.ioQueues) {
        await this.createIoQueue(q);
        for (const cid of q.cids.takenIds()) {
          if (q.retries[cid]! < 2 || q.deadlines[cid]! > started) continue;
          q.cancel(cid, STATUS_TIMED_OUT);
          failed++;
        }
        const posted = q.resubmitOutstanding(deadline);
        again += posted.again;
        held += posted.held;
      }
      this.timedOut += failed;
      this.bus.note(`controller reset done in ${Math.round(performance.now() - started)} ms: ${again} command(s) submitted again, ${held} submitted during the reset posted${failed > 0 ? `, ${failed} failed (timed out after their re-issue)` : ''}`);
    })().finally(() => (this.resetting = undefined));
    return this.resetting;
  }

  // --- shutdown ----------------------------------------------------------

  /** Fails everything outstanding; later submissions fail at once. */
  abandon(reason: string): void {
    if (this.gone !== undefined) return;
    this.gone = reason;
    for (const { poller } of this.byVector.values()) poller.stop();
    for (const q of [this.admin, ...this.ioQueues]) {
      if (q === undefined) continue;
      for (const cid of q.cids.takenIds()) q.cancel(cid, STATUS_GONE);
    }
  }

  /** Normal shutdown (CC.SHN), waiting for CSTS.SHST complete, bounded by CAP.TO. */
  async shutdown(): Promise<void> {
    const cc = this.bar.read4(REG.CC);
    this.bar.write4(REG.CC, (cc & ~CC.SHN_MASK) | CC.SHN_NORMAL);
    const limit = Math.max(this.cap.readyTimeoutMs, 500);
    const deadline = performance.now() + limit;
    while ((this.bar.read4(REG.CSTS) & CSTS.SHST_MASK) !== CSTS.SHST_COMPLETE) {
      if (performance.now() > deadline) throw new Error(`nvme: shutdown (CC.SHN) not complete within ${limit} ms`);
      await this.bus.timers.sleep(1);
    }
  }
}
