/**
 * The driver host: claims the configured devices (all or nothing), spawns
 * one device actor per device under a root host actor, and reports
 * everything as one RxJS stream. Each device actor supervises its own
 * driver (see device-machine.ts), so a crash or hang on one device is
 * handled there while the others keep running.
 *
 *   const host = DriverHost.claim(loadHostConfig(file, builtinDrivers));
 *   host.events.subscribe(console.log);
 *   host.start();
 *   ...
 *   await host.shutdown();     // graceful, bounded by shutdownTimeoutMs
 */
import { Subject, type Observable } from 'rxjs';
import { createActor, enqueueActions, setup, toPromise, type Actor, type InspectionEvent, type Observer } from 'xstate';
import type { BlockDevice } from '../drivers/block.js';
import type { DriverRegistry } from '../drivers/contract.js';
import { builtinDrivers } from '../drivers/index.js';
import type { PciAddress } from '../kernel/pci-address.js';
import type { KernelChannel, PcieErrorCount } from '../kernel/port.js';
import { PciDevice } from '../pci/device.js';
import { restartDelay } from './backoff.js';
import { claimAll, type Claim } from './claim.js';
import type { HostConfig } from './config.js';
import { deviceMachineFor, stateName, type DeviceActorInput, type DeviceStateName, type DeviceActorRef, type DeviceOutput } from './device-machine.js';
import type { HostEvent } from './events.js';
import { DeviceMeter, type ThreadStats } from './meter.js';
import { moduleFileOf } from './driver-source.js';
import type { PacketPort } from '../drivers/packet.js';
import { NetPort, PACKET_WAIT_MS } from './net-port.js';
import { packetService } from './packet-service.js';
import { blockService } from './block-service.js';
import { ServiceRegistry } from './service-registry.js';
import { pcieErrorCause } from './pcie-error.js';
import { HostExports } from './exports.js';


/** The kernel's channels about a device that the host watches, each registered at claim and at every reopen. */
const KERNEL_CHANNELS: readonly KernelChannel[] = ['request', 'error'];

export interface HostOptions {
  readonly registry?: DriverRegistry;
  /** How devices are opened; PciDevice.open by default (unit tests pass one over a fake kernel port). */
  readonly open?: (address: PciAddress) => PciDevice;
  /** An XState inspection observer: it sees the host, every device actor and every driver machine run in the main thread (not those in their own worker threads). */
  readonly inspect?: Observer<InspectionEvent> | ((event: InspectionEvent) => void);
}

export interface ShutdownReport {
  readonly elapsedMs: number;
  /** The graceful release overran shutdownTimeoutMs (or forceRelease was called) and devices were closed directly. */
  readonly forced: boolean;
  readonly devices: readonly DeviceOutput[];
}

interface Spawn {
  readonly claim: Claim;
  readonly input: DeviceActorInput;
}

/** Why a device will not provide again, for a consumer's refusal. */
function describeOutcome(outcome: DeviceOutput['outcome'], restarts: number): string {
  switch (outcome.kind) {
    case 'gave-up': return `its driver was given up after ${restarts} restart(s), the last ${outcome.fault.kind} fault: ${outcome.fault.message}`;
    case 'lost': return `it could not be reopened after a fault: ${outcome.error}`;
    case 'removed': return 'the kernel took it back (device request)';
    case 'forced': return 'closed by a forced release';
    case 'stopped': return 'its driver was stopped';
    case 'finished': return 'its driver finished';
  }
}

const hostMachine = setup({
  types: {
    input: {} as { spawns: readonly Spawn[] },
    context: {} as { devices: readonly DeviceActorRef[] },
    events: {} as { type: 'START' } | { type: 'SHUTDOWN' },
  },
  actions: {
    broadcast: enqueueActions(({ context, enqueue }, params: { type: 'START' | 'STOP' }) => {
      for (const device of context.devices) enqueue.sendTo(device, { type: params.type });
    }),
  },
}).createMachine({
  id: 'host',
  context: ({ input, spawn }) => ({
    devices: input.spawns.map(({ claim, input: deviceInput }) =>
      spawn(deviceMachineFor(claim.driver), { systemId: claim.entry.address, input: deviceInput })),
  }),
  initial: 'claimed',
  states: {
    claimed: {
      on: {
        START: { target: 'running', actions: { type: 'broadcast', params: { type: 'START' } } },
        SHUTDOWN: 'stopping',
      },
    },
    running: { on: { SHUTDOWN: 'stopping' } },
    stopping: { entry: { type: 'broadcast', params: { type: 'STOP' } } },
  },
});

export class DriverHost {
  private readonly subject = new Subject<HostEvent>();
  /** Who provides which service (block devices...), and every export of one to a consumer thread. */
  readonly services = new ServiceRegistry();
  /** Everything the host reports; subscribe before start() to see every transition. */
  readonly events: Observable<HostEvent> = this.subject.asObservable();
  private readonly actor: Actor<typeof hostMachine>;
  private readonly meters = new Map<PciAddress, DeviceMeter>();
  private statsTimer: NodeJS.Timeout | undefined;
  private stopping: Promise<ShutdownReport> | undefined;
  private forced = false;
  private readonly claims: readonly { ref: DeviceActorRef; claim: Claim }[];
  private watching = false;
  private settleForced!: (outputs: DeviceOutput[]) => void;
  /** Resolves when every device actor has ended (released), however it ended. */
  readonly settled: Promise<DeviceOutput[]>;
  /** The config's exports: opened as their providers attach, removed at shutdown. */
  private readonly exports: HostExports;

  private constructor(
    private readonly config: HostConfig,
    claims: readonly Claim[],
    options: HostOptions,
  ) {
    const open = options.open ?? ((address: PciAddress) => PciDevice.open(address));
    // A device reopened by a restart gets its kernel channels again.
    const reopen = (address: PciAddress): PciDevice => this.watchKernel(open(address));
    const spawns = claims.map((claim): Spawn => {
      const meter = new DeviceMeter();
      this.meters.set(claim.entry.address, meter);
      const address = claim.entry.address;
      return {
        claim,
        input: {
          address,
          device: claim.device,
          driver: claim.driver,
          options: claim.options,
          supervision: claim.entry.supervision,
          meter,
          reopen,
          onNote: (message) => this.emit({ type: 'note', at: Date.now(), address, message }),
          onQuiesced: (incarnation, report) => this.emit({ type: 'quiesced', at: Date.now(), address, incarnation, report }),
          onThread: (incarnation, threadId, dmaWindow) => this.emit({ type: 'thread', at: Date.now(), address, incarnation, threadId, dmaWindow }),
          ...(options.inspect === undefined ? {} : { inspect: options.inspect }),
          name: claim.entry.name,
          configPath: claim.entry.path,
          services: this.services,
        },
      };
    });
    this.exports = new HostExports(config.exports, {
      blockDevice: (name, timeoutMs) => this.blockDevice(name, timeoutMs),
      besideBlockDevice: (name, task, timeoutMs) => this.services.local.serveBeside(blockService, name, task, timeoutMs),
      besidePacketPort: (name, task, timeoutMs) => this.services.local.serveBeside(packetService, name, task, timeoutMs),
      emit: (event) => this.emit(event),
    });
    this.actor = createActor(hostMachine, { input: { spawns }, ...(options.inspect === undefined ? {} : { inspect: options.inspect }) });
    this.actor.start();
    const refs = this.actor.getSnapshot().context.devices;
    this.claims = refs.map((ref, i) => ({ ref, claim: spawns[i]!.claim }));
    for (const { claim } of this.claims) this.watchKernel(claim.device);
    // A forced release stops the actors, which then never finish: it settles the host itself.
    this.settled = Promise.race([
      Promise.all(refs.map((ref, i) => this.outcomeOf(ref, spawns[i]!.claim))),
      new Promise<DeviceOutput[]>((resolve) => (this.settleForced = resolve)),
    ]);
  }

  /** Claims every device of the config (all or nothing: a ConfigError leaves none open); start() runs them. */
  static claim(config: HostConfig, options: HostOptions = {}): DriverHost {
    const open = options.open ?? ((address: PciAddress) => PciDevice.open(address));
    return new DriverHost(config, claimAll(config, options.registry ?? builtinDrivers, open), options);
  }

  /** The kernel's asks for each device (VFIO device request), counted until its removal is reported. */
  private readonly requests = new Map<PciAddress, number>();
  /** Each device's uncorrectable PCIe error counts as the kernel last gave them: an error's cause is what grew since. */
  private readonly pcieErrors = new Map<PciAddress, readonly PcieErrorCount[] | undefined>();

  /**
   * Registers the device's kernel channels (VFIO_PCI_REQ_IRQ_INDEX,
   * VFIO_PCI_ERR_IRQ_INDEX) and watches them in this thread, where the host
   * keeps the kernel handles. An ask from the kernel sends REQUEST to the
   * device's actor, which quiesces, closes and reports it removed; the
   * kernel asks again (every 10 s on Linux) until the close, and later asks
   * are only counted. An uncorrectable PCIe error sends PCIE_ERROR, a driver
   * fault naming the errors the kernel counted since the last one. A device
   * without a channel, or whose registration fails, is still driven (noted;
   * a function with no ERR channel is conventional PCI, which has no AER,
   * and is not).
   */
  private watchKernel(device: PciDevice): PciDevice {
    const address = device.address;
    const note = (message: string) => this.emit({ type: 'note', at: Date.now(), address, message });
    const listeners: Record<KernelChannel, (count: number) => void> = {
      request: (count) => {
        const seen = (this.requests.get(address) ?? 0) + count;
        this.requests.set(address, seen);
        if (seen === count) note('the kernel asks for the device back (device request): removing it');
        this.actor.system.get(address)?.send({ type: 'REQUEST' });
      },
      error: () => {
        const now = device.isOpen ? device.uncorrectableErrors() : undefined;
        const cause = pcieErrorCause(this.pcieErrors.get(address), now);
        this.pcieErrors.set(address, now);
        this.actor.system.get(address)?.send({ type: 'PCIE_ERROR', message: `uncorrectable PCIe error reported by the kernel (AER): ${cause}` });
      },
    };
    const missing: Record<KernelChannel, string> = {
      request: 'an unbind or hot-unplug waits for the host to stop',
      error: 'an uncorrectable PCIe error of the device goes unseen',
    };
    for (const channel of KERNEL_CHANNELS) {
      try {
        if (channel === 'error') this.pcieErrors.set(address, device.uncorrectableErrors());
        const watched = device.onKernelChannel(channel, listeners[channel]);
        if (!watched && channel === 'request') note(`no device-request channel: ${missing.request}`);
      } catch (e) {
        note(`${channel === 'request' ? 'device-request' : 'PCIe error (AER)'} channel not registered (${e instanceof Error ? e.message : String(e)}): ${missing[channel]}`);
      }
    }
    return device;
  }

  private emit(event: HostEvent): void {
    this.subject.next(event);
  }

  /**
   * The block device `name` (e.g. "nvme0n1": the config entry's name and
   * the driver's suffix), once its driver provides it: at attach, and again
   * after each supervised restart (the old object then fails every request
   * with BlockGoneError). The same object on each call until then. From a
   * driver in its own thread it is this thread's own export of it (a
   * BlockProxy over shared-memory rings); from a driver in this thread, the
   * driver's object itself.
   */
  blockDevice(name: string, timeoutMs = 30_000): Promise<BlockDevice> {
    return this.services.local.consume(blockService, name, timeoutMs);
  }

  private readonly ports = new Map<string, NetPort>();

  /**
   * The packet port `name` (the config entry's name, by default its
   * address): the same object for the host's lifetime, attached while an
   * incarnation of its driver runs (PacketPort.attached), bound again to the
   * next one after a supervised restart, with its counters carried on. Made
   * on first use, so a program may subscribe before the driver is up. A
   * packet port has one consumer: this one.
   */
  packetPort(name: string): PacketPort {
    let port = this.ports.get(name);
    if (port === undefined) {
      port = new NetPort(name, () => this.services.local.consume(packetService, name, PACKET_WAIT_MS));
      this.ports.set(name, port);
    }
    return port;
  }

  get addresses(): PciAddress[] {
    return [...this.meters.keys()];
  }

  /** Starts reporting device transitions (at start, so subscribers of `events` see each device's 'claimed'). */
  private watchAll(): void {
    if (this.watching) return;
    this.watching = true;
    for (const { ref, claim } of this.claims) this.watch(ref, claim);
  }

  /** Reports every transition of a device actor, and the fault, restart and release details that go with them. */
  private watch(ref: DeviceActorRef, claim: Claim): void {
    const address = claim.entry.address;
    let last: { state: DeviceStateName; backoff: boolean } | undefined;
    const report = (snapshot: ReturnType<DeviceActorRef['getSnapshot']>) => {
      const state = stateName(snapshot.value);
      const backoff = snapshot.matches({ resetting: 'backoff' });
      if (last !== undefined && last.state === state && last.backoff === backoff) return;
      const entered = last?.state !== state;
      last = { state, backoff };
      const { context } = snapshot;
      const at = Date.now();
      if (entered) this.emit({ type: 'state', at, address, driver: claim.driver.name, state, incarnation: context.incarnation });
      if (entered && state === 'failed' && context.fault !== undefined) this.emit({ type: 'fault', at: context.fault.at, address, fault: context.fault });
      if (backoff) {
        this.emit({
          type: 'restart', at, address, attempt: context.restarts,
          delayMs: restartDelay(context.supervision.restart, context.restarts), reset: context.lastReset ?? 'reopen',
        });
      }
      if (snapshot.status === 'done' && snapshot.output.outcome.kind === 'removed') {
        const { error } = snapshot.output.released;
        this.emit({ type: 'removed', at, address, incarnation: context.incarnation, requests: this.requests.get(address) ?? 0, ...(error === undefined ? {} : { error }) });
      }
      if (snapshot.status === 'done') {
        this.emit({ type: 'released', at, address, outcome: snapshot.output.outcome, release: snapshot.output.released });
        const why = `the device ${address} that provided it was released: ${describeOutcome(snapshot.output.outcome, context.restarts)}`;
        this.exports.providerReleased(address, why);
        this.servicesEnded(address, why);
      }
    };
    // An actor's subscribers get its next snapshots, not the current one.
    report(ref.getSnapshot());
    ref.subscribe(report);
  }

  private readonly releasedDevices = new Set<PciAddress>();

  /**
   * What a released device provided will not come back: consumers waiting for it, or asking later, are refused at
   * once with `reason`; once every device is released, so is any ask at all.
   */
  private servicesEnded(address: PciAddress, reason: string): void {
    this.services.retire(address, reason);
    this.releasedDevices.add(address);
    if (this.releasedDevices.size === this.meters.size) this.services.endAll('every device of this host has been released');
  }

  /**
   * A device actor's end. One that errors itself (a bug in the host, not in
   * a driver) still gives its device back: closed directly.
   */
  private async outcomeOf(ref: DeviceActorRef, claim: Claim): Promise<DeviceOutput> {
    try {
      return await toPromise(ref);
    } catch (e) {
      const device = ref.getSnapshot().context.device;
      let error = e instanceof Error ? e.message : String(e);
      try {
        device.close();
      } catch (closeError) {
        error += `; close: ${String(closeError)}`;
      }
      return { address: claim.entry.address, outcome: { kind: 'lost', error }, restarts: ref.getSnapshot().context.restarts, released: { how: 'close', error } };
    }
  }

  start(): void {
    this.emit({ type: 'host', at: Date.now(), phase: 'running' });
    this.watchAll();
    this.actor.send({ type: 'START' });
    this.exports.start();
    let previous = new Map([...this.meters].map(([a, m]) => [a, m.interrupts]));
    let then = performance.now();
    this.statsTimer = setInterval(() => {
      const now = performance.now();
      for (const [address, meter] of this.meters) {
        const count = meter.interrupts;
        const rate = Math.round(((count - (previous.get(address) ?? 0)) * 1000) / (now - then));
        const thread = meter.threadStats();
        this.emit({
          type: 'stats', at: Date.now(), address, interrupts: count, interruptsPerSecond: rate, dmaBytesMapped: meter.dmaBytesMapped(),
          ...(thread === undefined ? {} : { thread }),
        });
      }
      previous = new Map([...this.meters].map(([a, m]) => [a, m.interrupts]));
      then = now;
    }, this.config.statsIntervalMs);
  }

  /**
   * Restarts the driver of `address` with its module's current code (a new
   * worker imports it afresh), keeping the device claimed; ignored unless
   * the driver is running.
   */
  reload(address: PciAddress): void {
    this.claims.find(({ claim }) => claim.entry.address === address)?.ref.send({ type: 'RELOAD' });
  }

  /** The modules of the drivers this host runs in worker threads, with the devices each drives (what `--watch` watches). */
  driverModules(): Map<string, PciAddress[]> {
    const files = new Map<string, PciAddress[]>();
    for (const { claim } of this.claims) {
      const file = moduleFileOf(claim.driver);
      if (file !== undefined) files.set(file, [...(files.get(file) ?? []), claim.entry.address]);
    }
    return files;
  }

  /** The device's current driver thread (id, heartbeat age, heap), when its driver runs in one. */
  threadStats(address: PciAddress): ThreadStats | undefined {
    return this.meters.get(address)?.threadStats();
  }

  /**
   * The shared memory of the device's current driver thread (heartbeat,
   * interrupt count: DriverLedger.of reads it), for a monitor in another
   * thread that must keep sampling while this one is busy, e.g. taking a
   * hung driver's device back.
   */
  threadLedger(address: PciAddress): SharedArrayBuffer | undefined {
    return this.meters.get(address)?.threadLedger();
  }

  /** Interrupts delivered to a device's driver so far (all incarnations). */
  interruptCount(address: PciAddress): number {
    return this.meters.get(address)?.interrupts ?? 0;
  }

  /**
   * Graceful stop: every device actor detaches (driver stopped, device
   * quiesced and closed). If that takes longer than shutdownTimeoutMs, the
   * remaining devices are closed directly (forceRelease). Idempotent.
   */
  shutdown(): Promise<ShutdownReport> {
    this.stopping ??= (async () => {
      const started = performance.now();
      this.watchAll();
      this.emit({ type: 'host', at: Date.now(), phase: 'stopping' });
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), this.config.shutdownTimeoutMs)));
      // The exports go first, while their providers still serve: a ublk disk's stop writes back what the kernel
      // still holds for it, through the driver. Within the same bound as the rest.
      const exportsClosed = this.exports.close();
      await Promise.race([exportsClosed, deadline]);
      for (const port of this.ports.values()) port.stop();
      this.actor.send({ type: 'SHUTDOWN' });
      const overran = await Promise.race([this.settled.then(() => false), deadline]);
      clearTimeout(timer);
      if (overran) this.forceRelease(`graceful release took longer than ${this.config.shutdownTimeoutMs} ms`);
      const devices = await this.settled;
      await exportsClosed;
      return this.finish(started, devices);
    })();
    return this.stopping;
  }

  /**
   * Stops every actor and closes every device at once (PciDevice.close:
   * bus mastering off first, then interrupts, DMA, BARs, the kernel
   * handle), without waiting for drivers. For a second signal or an
   * overrun shutdown.
   */
  forceRelease(reason: string): void {
    if (this.forced) return;
    this.forced = true;
    this.emit({ type: 'host', at: Date.now(), phase: 'forced', detail: reason });
    // What the OS sees of the exports goes synchronously (the process may die of the signal right after).
    void this.exports.close();
    const snapshots = this.claims.map(({ ref }) => ref.getSnapshot());
    this.actor.stop();
    this.settleForced(snapshots.map((snapshot, i): DeviceOutput => {
      if (snapshot.status === 'done') return snapshot.output;
      const { device, restarts, attachment } = snapshot.context;
      let error: string | undefined;
      try {
        device.close();
      } catch (e) {
        // Closing continues with the next device: a forced stop must not leave any open.
        error = e instanceof Error ? e.message : String(e);
      }
      // Its driver's thread goes too, whatever it is doing (a detach spinning past its bound): nothing of the host may
      // outlive the release and keep the process.
      if (attachment?.kind === 'thread') void attachment.thread.abandon();
      return { address: this.claims[i]!.claim.entry.address, outcome: { kind: 'forced' }, restarts, released: { how: 'close', error } };
    }));
  }

  private finish(started: number, devices: DeviceOutput[]): ShutdownReport {
    clearInterval(this.statsTimer);
    const elapsedMs = Math.round(performance.now() - started);
    this.emit({ type: 'host', at: Date.now(), phase: 'stopped', detail: `${devices.length} device(s) released in ${elapsedMs} ms${this.forced ? ' (forced)' : ''}` });
    this.actor.stop();
    this.subject.complete();
    return { elapsedMs, forced: this.forced, devices };
  }
}
