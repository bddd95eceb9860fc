/**
 * The main-thread side of a driver incarnation in its own worker thread
 * (workers/driver-thread-body.ts). The main thread keeps the kernel handles and
 * the BAR mappings; the worker gets them as shared data. This side watches
 * the worker's heartbeat (a counter its event loop advances in shared
 * memory), and can take the device back at any time, whatever the worker is
 * doing: bus mastering off, the enabled vectors off, every DMA mapping in
 * its DMA window removed, the BAR mappings revoked, and only then the worker
 * terminated and the interrupt fds it held closed.
 *
 * A plain node:worker_threads Worker, not a piscina pool: each incarnation
 * is one long-lived thread with its own resourceLimits, terminated on a
 * fault and never reused (a fresh isolate is the point of a restart);
 * piscina's queue, reuse and respawn-on-exit serve tasks, and its destroy()
 * ends a pool, not one thread.
 */
import { Worker } from 'node:worker_threads';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../pci/config.js';
import type { PciDevice, SharedDevice } from '../pci/device.js';
import type { InterruptType } from '../pci/intr.js';
import { quiesce } from '../pci/teardown.js';
import { UpciError } from '../kernel/errors.js';
import { closeFd } from '../kernel/fd-calls.js';
import { runQueueWaitMs } from '../kernel/thread-wait.js';
import { detachOverran } from '../workers/phase-bounds.js';
import { SilenceMeter } from './silence-meter.js';
import type { Supervision } from './config.js';
import { DriverLedger } from '../workers/driver-ledger.js';
import type { DriverSource } from '../workers/driver-import.js';
import type { ServiceLink } from '../services/service-registry.js';
import type { DriverThreadData, HostMessage, ThreadMessage } from '../workers/driver-thread-body.js';
import type { ThreadStats, ThreadView } from './meter.js';

export interface ThreadSpec {
  readonly device: PciDevice;
  readonly source: DriverSource;
  readonly options: unknown;
  readonly incarnation: number;
  readonly supervision: Supervision;
  /** The config entry's name (DriverBus.name). */
  readonly name: string;
  onNote(message: string): void;
  /** The thread's link to the host's service registry (its port goes to the thread). */
  readonly services: ServiceLink;
  /** An INTx event was not acked within watchdogMs. */
  onStall(vector: number, waitedMs: number): void;
  /** The heartbeat stopped for longer than watchdogMs (`silence` says how long, and for how much of it this process ran): the thread is hung. */
  onHang(message: string, silence?: Silence): void;
}

/** A watchdog's measure of a hang when it called it. */
export interface Silence {
  /** Since the thread's last beat, by the thread's clock (Date.now()). */
  readonly ageMs: number;
  /**
   * Of that, what the watchdog counted: its checks' intervals, each at most one heartbeat period (lateness beyond
   * that is this process not running), less what the thread spent waiting to run (`threadWaitedMs`).
   */
  readonly whileRunningMs: number;
  /** Of the silence, what the thread spent runnable but not on a CPU (starved by other threads), by the kernel's count; 0 where there is none. */
  readonly threadWaitedMs: number;
}

/** What taking the device back found, read back from the device and the kernel. */
export interface QuiesceReport {
  /** The worker was still running when the device was taken back (a hang), not already gone (a crash, a clean stop). */
  readonly threadRunning: boolean;
  /** PCI_COMMAND's bus master bit, read from config space after it was cleared. */
  readonly busMaster: boolean;
  /** The interrupt type that was enabled and was disabled, if any. */
  readonly vectorsDisabled: InterruptType | undefined;
  /** MSI and MSI-X enable bits read back from config space. */
  readonly msiEnabled: boolean;
  readonly msixEnabled: boolean;
  /** DMA mappings the kernel still counts in the domain beyond those before the incarnation (undefined: the kernel does not say). */
  readonly dmaMappingsLeft: number | undefined;
}

/**
 * Heap use, as a share of heapLimitMb, at which the host stops a driver
 * thread itself: before V8 would (out of memory, the thread gone), so the
 * device is taken back from a thread that is still there.
 */
const HEAP_WATERMARK = 0.8;
const MiB = 1 << 20;

/** How long a graceful stop waits for the thread beyond the driver's own detach bound (attachTimeoutMs). */
const RELEASE_SLACK_MS = 2000;

/**
 * How long a new worker may take to load its modules (a fresh isolate
 * compiles xstate, rxjs and upci again: about 18 s in the TCG guest, where
 * code runs ~10x slower and every file comes over 9p); attachTimeoutMs
 * counts from then. kill() also waits for it (see there).
 */
export const LOAD_TIMEOUT_MS = 120_000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

export class DriverThread implements ThreadView {
  readonly ledger = DriverLedger.create();
  private readonly worker: Worker;
  /** Resolves when the driver's attach returned; rejects when it threw, or the thread died first. */
  readonly attached: Promise<void>;
  /** Resolves once the worker has loaded its modules (or exited), when the attach proper begins. */
  readonly loaded: Promise<void>;
  /** After attach: resolves when the driver machine finished, rejects when it crashed or the thread died. */
  readonly ended: Promise<void>;
  private settleAttach!: { resolve: () => void; reject: (e: Error) => void };
  private settleEnd!: { resolve: () => void; reject: (e: Error) => void };
  private released: (() => void) | undefined;
  private readonly exited: Promise<void>;
  /** Resolves once the worker has loaded its modules (or exited): see kill(). */
  private readonly ready: Promise<void>;
  private markReady!: () => void;
  private hasExited = false;
  private isAttached = false;
  private watchdog: NodeJS.Timeout | undefined;
  private lastBeat = -1;
  private readonly mappingsBefore: number | undefined;
  private report: QuiesceReport | undefined;
  /** The device as the worker took it up, its DMA window among it. */
  private readonly shared: SharedDevice;

  constructor(private readonly spec: ThreadSpec) {
    const { device, supervision } = spec;
    const dma = device.kernel.dma;
    this.mappingsBefore = dma.availableMappings();
    this.ready = new Promise((resolve) => (this.markReady = resolve));
    this.loaded = this.ready;
    this.attached = new Promise((resolve, reject) => (this.settleAttach = { resolve, reject }));
    this.ended = new Promise((resolve, reject) => (this.settleEnd = { resolve, reject }));
    // Nobody awaits `ended` before attach succeeds, nor `attached` after it fails.
    this.ended.catch(() => {});
    this.attached.catch(() => {});
    const shared = device.share();
    if (shared === undefined) throw new Error(`${device.address}: its kernel port cannot share the device with a driver thread`);
    this.shared = shared;
    const data: DriverThreadData = {
      device: shared,
      source: spec.source,
      options: spec.options,
      incarnation: spec.incarnation,
      watchdogMs: supervision.watchdogMs,
      heartbeatMs: supervision.heartbeatMs,
      detachTimeoutMs: supervision.attachTimeoutMs,
      name: spec.name,
      ledger: this.ledger.buffer,
      services: spec.services.port,
    };
    this.worker = new Worker(new URL('../workers/driver-thread-body.js', import.meta.url), {
      workerData: data,
      transferList: [spec.services.port],
      name: `upci ${device.address} #${spec.incarnation}`,
      resourceLimits: { maxOldGenerationSizeMb: supervision.heapLimitMb },
    });
    this.worker.on('message', (m: ThreadMessage) => this.onMessage(m));
    this.worker.on('error', (e: Error) => this.fail(`the driver thread died: ${message(e)}`));
    this.exited = new Promise((resolve) => this.worker.once('exit', (code) => {
      this.hasExited = true;
      this.markReady();
      clearInterval(this.watchdog);
      this.fail(`the driver thread exited (code ${code})`);
      resolve();
    }));
  }

  get threadId(): number {
    return this.worker.threadId;
  }

  /** The only bus addresses the thread may map DMA at (as hex `start-end`, ends inclusive), or none when its port manages no IOVA space. */
  get dmaWindow(): readonly string[] {
    return (this.shared.handles.dmaWindow ?? []).map((r) => `0x${r.start.toString(16)}-0x${r.end.toString(16)}`);
  }

  private onMessage(m: ThreadMessage): void {
    switch (m.type) {
      case 'ready': return this.markReady();
      case 'attached':
        this.isAttached = true;
        this.settleAttach.resolve();
        this.startWatchdog();
        return;
      case 'attach-failed': return this.settleAttach.reject(m.code === undefined ? new Error(m.message) : new UpciError(m.code, m.message));
      case 'note': return this.spec.onNote(m.message);
      case 'stall': return this.spec.onStall(m.vector, m.waitedMs);
      case 'finished': return this.settleEnd.resolve();
      case 'crashed': return this.settleEnd.reject(new Error(m.message));
      case 'released': return this.released?.();
    }
  }

  private fail(why: string): void {
    const error = new Error(why);
    if (this.isAttached) this.settleEnd.reject(error);
    else this.settleAttach.reject(error);
  }

  /**
   * Checked four times per heartbeat period: a hang is seen within watchdogMs + one period of silence the thread
   * could have used; a heap past the watermark at the beat that shows it.
   */
  private startWatchdog(): void {
    const { watchdogMs, heartbeatMs, heapLimitMb } = this.spec.supervision;
    const period = Math.max(1, Math.floor(heartbeatMs / 4));
    let lastCheck = performance.now();
    const silence = new SilenceMeter(heartbeatMs);
    this.watchdog = setInterval(() => {
      const now = performance.now();
      const interval = now - lastCheck;
      lastCheck = now;
      const beat = this.ledger.heartbeat;
      if (beat !== this.lastBeat) {
        this.lastBeat = beat;
        silence.beat(interval, this.ledger.heartbeatAgeMs);
        // By what V8's limit counts (committed old generation), not heapUsed: fragmentation can put the
        // limit within reach while heapUsed is still below the watermark.
        const old = this.ledger.heapOld;
        if (old > HEAP_WATERMARK * heapLimitMb * MiB) {
          clearInterval(this.watchdog);
          this.spec.onHang(`the driver thread's heap reached ${Math.round(old / MiB)} MiB of its ${heapLimitMb} MiB limit (heapLimitMb; old generation, committed): it is leaking`);
        }
        return;
      }
      const tid = this.ledger.tid;
      silence.quiet(interval, tid === undefined ? undefined : runQueueWaitMs(tid));
      const silentMs = silence.silentMs;
      if (silentMs > watchdogMs) {
        clearInterval(this.watchdog);
        const ageMs = Math.round(this.ledger.heartbeatAgeMs ?? silentMs);
        const counted = ageMs > silentMs + heartbeatMs ? ` (${Math.round(silentMs)} ms of it while it could run)` : '';
        this.spec.onHang(`no heartbeat from the driver thread for ${ageMs} ms${counted} (watchdogMs ${watchdogMs}): it is hung`,
          { ageMs, whileRunningMs: Math.round(silentMs), threadWaitedMs: Math.round(silence.waitedMs) });
      }
    }, period);
    this.watchdog.unref();
  }

  stats(): ThreadStats {
    const age = this.ledger.heartbeatAgeMs;
    return {
      threadId: this.worker.threadId,
      heartbeatAgeMs: age === undefined ? undefined : Math.round(age),
      heapUsed: this.ledger.heapUsed,
      heapLimit: this.ledger.heapLimit,
    };
  }

  /**
   * Takes the device back from the thread, in this thread and whatever the
   * worker does meanwhile; synchronous, so the worker cannot run a step of
   * the driver's own in between the steps here from this thread's view.
   */
  private takeBack(): QuiesceReport {
    if (this.report !== undefined) return this.report;
    const { device } = this.spec;
    const threadRunning = !this.hasExited;
    const kind = this.ledger.irqKind;
    let failure: unknown;
    try {
      quiesce(`taking ${device.address} back from its driver thread`, {
        busMaster: () => device.disableBusMaster(),
        interrupts: kind === undefined ? [] : [() => {
          device.kernel.disableIrqs(kind);
          this.ledger.irqKind = undefined;
        }],
        dma: [() => device.unmapSharedDma(this.shared)],
        bars: [() => device.revokeShared()],
      });
    } catch (e) {
      failure = e;
    }
    const available = device.kernel.dma.availableMappings();
    this.report = {
      threadRunning,
      busMaster: (device.config.read(2, PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0,
      vectorsDisabled: kind,
      msiEnabled: device.msi()?.enabled ?? false,
      msixEnabled: device.msix()?.enabled ?? false,
      dmaMappingsLeft: available === undefined || this.mappingsBefore === undefined ? undefined : this.mappingsBefore - available,
    };
    if (failure !== undefined) throw failure;
    return this.report;
  }

  /**
   * A hung or failed incarnation: the device is taken back first (the
   * worker may still be running), then the worker is terminated and the
   * interrupt fds it held are closed.
   */
  async kill(): Promise<QuiesceReport> {
    clearInterval(this.watchdog);
    let report: QuiesceReport | undefined;
    let failure: unknown;
    try {
      report = this.takeBack();
    } catch (e) {
      failure = e;
    }
    // A worker terminated while a native addon initialises (koffi) aborts the whole process: let it finish loading first.
    await Promise.race([this.ready, sleep(LOAD_TIMEOUT_MS)]);
    await this.worker.terminate();
    await this.exited;
    try {
      this.spec.device.endShare(this.shared);
    } catch (e) {
      failure ??= e;
    }
    for (const fd of this.ledger.fds.take()) closeFd(fd);
    if (failure !== undefined) throw failure;
    return report!;
  }

  /**
   * The host closed the device directly (a forced release): the worker is ended where it is, with no take-back (there
   * is no device left to take back), and the fds it held are closed. A stop() waiting on it ends with it.
   */
  async abandon(): Promise<void> {
    clearInterval(this.watchdog);
    if (!this.hasExited) {
      await Promise.race([this.ready, sleep(LOAD_TIMEOUT_MS)]);
      await this.worker.terminate();
      await this.exited;
    }
    for (const fd of this.ledger.fds.take()) closeFd(fd);
  }

  /** A clean stop: the driver detaches in its thread (DriverModule.detach, bounded by attachTimeoutMs), then kill() makes sure. */
  async stop(): Promise<QuiesceReport> {
    clearInterval(this.watchdog);
    if (!this.hasExited) {
      let timer: NodeJS.Timeout | undefined;
      const { attachTimeoutMs } = this.spec.supervision;
      const answered = await Promise.race([
        new Promise<boolean>((resolve) => {
          this.released = () => resolve(true);
          this.worker.postMessage({ type: 'stop' } satisfies HostMessage);
        }),
        this.exited.then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), attachTimeoutMs + RELEASE_SLACK_MS))),
      ]);
      clearTimeout(timer);
      // A detach that blocks or spins its thread never reaches its own bound's timer there: it is said here.
      if (!answered) this.spec.onNote(`${this.spec.name}: ${detachOverran(attachTimeoutMs)}, its thread not answering: taking the device back`);
    }
    return this.kill();
  }
}
