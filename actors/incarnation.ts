/**
 * One attached incarnation of a driver, wherever it runs: in a worker thread
 * of its own (a DriverThread: the thread runs the driver's machine, its bus
 * and its interrupts) or in this thread (an AttachedBus here and the
 * driver's machine run here: drivers made in this thread, kernel ports that
 * cannot share a device). The device machine (device-machine.ts) calls only
 * this interface; attachIncarnation() picks where it runs.
 */
import type { InspectionEvent, Observer } from 'xstate';
import type { AnyDriver } from '../drivers/contract.js';
import type { PciDevice } from '../pci/device.js';
import type { ServiceLink, ServiceRegistry } from '../services/service-registry.js';
import type { Supervision } from './config.js';
import { AttachedBus, stopBusMaster } from '../workers/driver-bus.js';
import type { DriverSource } from '../workers/driver-import.js';
import { runDriverMachine } from '../workers/driver-run.js';
import { sourceOf } from './driver-source.js';
import { DriverThread, LOAD_TIMEOUT_MS, type QuiesceReport, type Silence } from './driver-thread.js';
import type { DeviceMeter } from './meter.js';
import { attachOverran, bounded, cleanDetach } from '../workers/phase-bounds.js';

export interface Incarnation {
  /** Runs the driver's machine until it ends; a rejection is the driver's fault. Aborting `signal` stops a machine run here. */
  run(signal: AbortSignal): Promise<void>;
  /**
   * Takes the device back from the driver, bus mastering off whatever happens:
   * its consumers failed, its thread (if any) stopped (`graceful`: asked to
   * detach itself first) or killed. `removed`: the kernel took the device.
   */
  quiesce(graceful: boolean, removed?: boolean): Promise<void>;
  /** The last take-back, before the device is released: the driver's clean detach (bounded), then a graceful quiesce. */
  release(): Promise<void>;
  /** The host closed the device directly (a forced stop): whatever of the incarnation runs on its own ends now, unwaited. */
  abandon(): void;
}

/** What an incarnation is attached with. */
export interface IncarnationInput {
  readonly device: PciDevice;
  readonly driver: AnyDriver;
  readonly options: unknown;
  readonly incarnation: number;
  readonly supervision: Supervision;
  /** The config entry's name. */
  readonly name: string;
  readonly services: ServiceRegistry;
  readonly meter: DeviceMeter;
  readonly inspect?: Observer<InspectionEvent> | ((event: InspectionEvent) => void);
  readonly onNote: (message: string) => void;
  readonly onQuiesced: (incarnation: number, report: QuiesceReport) => void;
  readonly onThread: (incarnation: number, threadId: number, dmaWindow: readonly string[]) => void;
  /** The driver looks hung (a stalled INTx vector, a silent thread). */
  readonly onWatchdog: (message: string, silence?: Silence) => void;
}

const stallMessage = (vector: number, waitedMs: number) =>
  `INTx vector ${vector} not acked within ${waitedMs} ms: the driver is hung (line left masked)`;

/**
 * Attaches the driver: in a thread of its own whenever the kernel port can
 * share the device and a worker can import the driver (built-in, or loaded
 * from a module), unless the driver asks for the main thread; here
 * otherwise. Each phase is bounded (LOAD_TIMEOUT_MS, attachTimeoutMs); a
 * failed attach leaves the device quiesced.
 */
export async function attachIncarnation(input: IncarnationInput): Promise<Incarnation> {
  const source = sourceOf(input.driver);
  if (source !== undefined && input.device.kernel.handles !== undefined && (input.driver.thread ?? 'own') === 'own') {
    return ThreadIncarnation.attach(input, source);
  }
  return InlineIncarnation.attach(input);
}

class ThreadIncarnation implements Incarnation {
  private constructor(
    private readonly input: IncarnationInput,
    private readonly thread: DriverThread,
    private readonly link: ServiceLink,
  ) {}

  static async attach(input: IncarnationInput, source: DriverSource): Promise<Incarnation> {
    const { device, driver, supervision, incarnation } = input;
    const link = input.services.link(`${device.address} #${incarnation}`, device.address);
    let thread: DriverThread;
    try {
      thread = new DriverThread({
        device, source, options: input.options, incarnation, supervision, name: input.name, services: link,
        onNote: input.onNote,
        onStall: (vector, waitedMs) => input.onWatchdog(stallMessage(vector, waitedMs)),
        onHang: input.onWatchdog,
      });
    } catch (e) {
      link.close(`${device.address}: its driver thread did not start`);
      throw e;
    }
    input.meter.follow(thread);
    input.onThread(incarnation, thread.threadId, thread.dmaWindow);
    const attached = new ThreadIncarnation(input, thread, link);
    try {
      await bounded(thread.loaded, LOAD_TIMEOUT_MS, `${driver.name}: the driver thread did not load its modules within ${LOAD_TIMEOUT_MS} ms`);
      await bounded(thread.attached, supervision.attachTimeoutMs, attachOverran(driver.name, supervision.attachTimeoutMs));
      return attached;
    } catch (e) {
      await attached.quiesce(false).catch(() => {});
      throw e;
    }
  }

  run(): Promise<void> {
    return this.thread.ended;
  }

  async quiesce(graceful: boolean, removed = false): Promise<void> {
    const { device, incarnation } = this.input;
    const reason = removed
      ? `the kernel took ${device.address} back (device request: unbind or hot-unplug); it is gone from this host`
      : `the host took ${device.address} back from its driver (stopped, crashed or hung); ask for it again to get the restarted driver's`;
    // Its consumers fail at once; what it consumes stays usable to its own clean detach, and ends with the thread.
    this.link.withdrawProvided(reason);
    try {
      const report = await (graceful ? this.thread.stop() : this.thread.kill());
      this.input.onQuiesced(incarnation, report);
    } finally {
      this.link.close(reason);
      this.input.meter.follow(undefined);
      stopBusMaster(device);
    }
  }

  /** The thread detaches its driver itself (DriverThread.stop). */
  release(): Promise<void> {
    return this.quiesce(true);
  }

  /** The thread goes, whatever it is doing (a detach spinning past its bound): nothing may outlive the release and keep the process. */
  abandon(): void {
    void this.thread.abandon();
  }
}

class InlineIncarnation implements Incarnation {
  private constructor(
    private readonly input: IncarnationInput,
    private readonly bus: AttachedBus,
    private readonly resources: unknown,
  ) {}

  static async attach(input: IncarnationInput): Promise<Incarnation> {
    const { device, driver, supervision } = input;
    const bus = new AttachedBus(device, input.incarnation, {
      name: input.name,
      services: input.services.local,
      watchdogMs: supervision.watchdogMs,
      meter: input.meter,
      onStall: (vector, waitedMs) => input.onWatchdog(stallMessage(vector, waitedMs)),
      onNote: input.onNote,
    });
    try {
      const resources = await bounded(
        bus.attaching(() => driver.attach(bus, input.options as never)),
        supervision.attachTimeoutMs, attachOverran(driver.name, supervision.attachTimeoutMs),
      );
      return new InlineIncarnation(input, bus, resources);
    } catch (e) {
      // A late attach finds its bus reclaimed: every call on it throws.
      bus.release();
      throw e;
    }
  }

  run(signal: AbortSignal): Promise<void> {
    const { driver, options, inspect } = this.input;
    const machine = runDriverMachine(driver, this.bus, options, this.resources, inspect);
    signal.addEventListener('abort', () => machine.stop());
    return machine.ended;
  }

  async quiesce(): Promise<void> {
    try {
      stopBusMaster(this.input.device);
    } finally {
      this.bus.release();
    }
  }

  /** A driver here first detaches cleanly (an NVMe shutdown), bounded by attachTimeoutMs. */
  async release(): Promise<void> {
    const { driver, supervision, onNote } = this.input;
    if (driver.detach !== undefined) await cleanDetach(driver, supervision.attachTimeoutMs, () => driver.detach!(this.bus, this.resources), onNote);
    await this.quiesce();
  }

  /** Nothing of it runs on its own: its machine and bus live in this thread, and go with the device's close. */
  abandon(): void {}
}
