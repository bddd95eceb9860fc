/**
 * The driver host: claims the configured devices (those named by address
 * all or nothing, at claim()), spawns one device actor per device under a
 * root host actor, and reports everything as one RxJS stream. Each device
 * actor supervises its own driver (see device-machine.ts), so a crash or
 * hang on one device is handled there while the others keep running.
 *
 * The set of devices changes while the host runs: one reconciler
 * (actors/reconcile.ts) compares the config's entries with the devices a
 * DeviceWatcher sees (pci/device-watcher.ts) and the ones held, whenever a
 * device appears, is bound or goes, a device actor ends, or the config is
 * replaced (reconfigure(), SIGHUP in `upci run`).
 *
 *   const host = DriverHost.claim(loadHostConfig(file, builtinDrivers));
 *   host.events.subscribe(console.log);
 *   host.start();
 *   ...
 *   await host.shutdown();     // graceful, bounded by shutdownTimeoutMs
 */
import { Subject, type Observable } from 'rxjs';
import { assign, createActor, enqueueActions, setup, toPromise, type Actor, type InspectionEvent, type Observer } from 'xstate';
import type { BlockDevice } from '../drivers/block.js';
import type { DriverRegistry } from '../drivers/contract.js';
import { builtinDrivers } from '../drivers/index.js';
import type { PciAddress } from '../kernel/pci-address.js';
import type { KernelChannel, PcieErrorCount } from '../kernel/port.js';
import { PciDevice } from '../pci/device.js';
import { restartDelay } from './backoff.js';
import { claimAll, claimOne, type Claim } from './claim.js';
import type { DeviceEntry, HostConfig } from './config.js';
import { ConfigError } from './config-error.js';
import { entryIdentity, plan, type HeldDevice, type Step } from './reconcile.js';
import type { DeviceChange, DeviceWatcher, PresentDevice } from '../pci/device-watcher.js';
import { deviceMachine, stateName, type DeviceActorInput, type DeviceStateName, type DeviceActorRef, type DeviceOutput } from './device-machine.js';
import type { HostEvent } from './events.js';
import { DeviceMeter, type ThreadStats } from './meter.js';
import { moduleFileOf } from './driver-source.js';
import type { PacketPort } from '../drivers/packet.js';
import { NetPort, PACKET_WAIT_MS } from '../services/net-port.js';
import { packetService } from '../services/packet-service.js';
import { blockService } from '../services/block-service.js';
import { ServiceRegistry } from '../services/service-registry.js';
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
  /**
   * The PCI functions present and their changes (LinuxDeviceWatcher in `upci run`): with one, match entries claim
   * devices as they appear and a device that comes back is claimed again; the host owns it and closes it at the end.
   * Without, the host knows only the devices its address entries name.
   */
  readonly watcher?: DeviceWatcher;
}

/** What a reconfigure() did: devices claimed, released, restarted (released and claimed again for a changed entry). */
export interface ReconfigureReport {
  readonly claimed: PciAddress[];
  readonly released: PciAddress[];
  readonly restarted: PciAddress[];
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
  readonly systemId: string;
}

/** A device actor of this host, from its claim to its end. */
interface Holding {
  readonly ref: DeviceActorRef;
  readonly claim: Claim;
  /** entryIdentity() of its entry at claim: a reload that changes the entry restarts it. */
  readonly identity: string;
  output: DeviceOutput | undefined;
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
    context: {} as { devices: readonly DeviceActorRef[] },
    events: {} as { type: 'START' } | { type: 'SHUTDOWN' } | { type: 'CLAIM'; spawn: Spawn },
  },
  actions: {
    broadcast: enqueueActions(({ context, enqueue }, params: { type: 'START' | 'STOP' }) => {
      for (const device of context.devices) enqueue.sendTo(device, { type: params.type });
    }),
    spawnDevice: assign({
      devices: ({ context, event, spawn }) => (event.type !== 'CLAIM' ? context.devices
        : [...context.devices, spawn(deviceMachine, { systemId: event.spawn.systemId, input: event.spawn.input }) as DeviceActorRef]),
    }),
  },
}).createMachine({
  id: 'host',
  context: { devices: [] },
  initial: 'claimed',
  states: {
    claimed: {
      on: {
        START: { target: 'running', actions: { type: 'broadcast', params: { type: 'START' } } },
        SHUTDOWN: 'stopping',
        CLAIM: { actions: 'spawnDevice' },
      },
    },
    // A device claimed while the host runs is started by the host once its transitions are watched (its 'claimed' seen).
    running: { on: { SHUTDOWN: 'stopping', CLAIM: { actions: 'spawnDevice' } } },
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
  /** By address, kept across the claims of one address, so a device's counts go on after it is claimed again. */
  private readonly meters = new Map<PciAddress, DeviceMeter>();
  private statsTimer: NodeJS.Timeout | undefined;
  private stopping: Promise<ShutdownReport> | undefined;
  private forced = false;
  private started = false;
  /** Every device actor of this host, in the order claimed (one address may recur: claimed again after it came back). */
  private readonly holdings: Holding[] = [];
  /** The device actors not yet ended, by address. */
  private readonly held = new Map<PciAddress, Holding>();
  /** Devices whose release the reconciler asked for (a removed or changed entry): their end is no failure. */
  private readonly releasing = new Set<PciAddress>();
  /**
   * Devices the kernel asked back (device request): left alone until gone from the bus, or unbound and then bound
   * to vfio-pci again by someone, so that the host never takes back what the kernel or an administrator just took.
   */
  private readonly withdrawn = new Map<PciAddress, 'until-unbound' | 'until-rebound'>();
  /**
   * Devices whose claim or bind failed, or whose driver ended (given up, finished), by the identity of the entry that
   * wanted them: not tried again until the device changes (appears, goes, is bound) or the entry does (a reload).
   */
  private readonly failed = new Map<PciAddress, string>();
  private watching = false;
  private settle!: (outputs: DeviceOutput[]) => void;
  /**
   * Resolves when every device actor has ended (released), however it ended, and no more will come: at once when
   * they all have, for a host without a watcher; only once it is stopping, for one with (a device may yet appear).
   */
  readonly settled: Promise<DeviceOutput[]> = new Promise((resolve) => (this.settle = resolve));
  /** The config's exports: opened as their providers attach, removed at shutdown. */
  private readonly exports: HostExports;
  private readonly registry: DriverRegistry;
  private readonly open: (address: PciAddress) => PciDevice;
  private readonly watcher: DeviceWatcher | undefined;
  private spawned = 0;

  private constructor(
    private config: HostConfig,
    claims: readonly Claim[],
    private readonly options: HostOptions,
  ) {
    this.registry = options.registry ?? builtinDrivers;
    this.open = options.open ?? ((address: PciAddress) => PciDevice.open(address));
    this.watcher = options.watcher;
    this.exports = new HostExports(config.exports, {
      serviceLink: (label) => this.services.link(label),
      besideBlockDevice: (name, task, timeoutMs) => this.services.local.serveBeside(blockService, name, task, timeoutMs),
      besidePacketPort: (name, task, timeoutMs) => this.services.local.serveBeside(packetService, name, task, timeoutMs),
      emit: (event) => this.emit(event),
    });
    this.actor = createActor(hostMachine, options.inspect === undefined ? {} : { inspect: options.inspect });
    this.actor.start();
    for (const claim of claims) this.spawn(claim);
    this.watcher?.onChange((change) => this.deviceChanged(change));
  }

  /**
   * Claims every device the config names by address (all or nothing: a ConfigError leaves none open, and an entry
   * that may "bind" has its device handed to vfio-pci first); start() runs them and claims what match entries find.
   */
  static claim(config: HostConfig, options: HostOptions = {}): DriverHost {
    const open = options.open ?? ((address: PciAddress) => PciDevice.open(address));
    const claims = claimAll(config, options.registry ?? builtinDrivers, open, (entry) => {
      if (entry.bind && options.watcher?.present().find((d) => d.address === entry.address)?.driver !== 'vfio-pci') options.watcher?.bind(entry.address);
    });
    return new DriverHost(config, claims, options);
  }

  /** A claimed device becomes a device actor (started at once when the host runs). */
  private spawn(claim: Claim): void {
    const { address } = claim;
    let meter = this.meters.get(address);
    if (meter === undefined) this.meters.set(address, (meter = new DeviceMeter()));
    this.requests.delete(address);
    this.failed.delete(address);
    // A device reopened by a restart gets its kernel channels again.
    const reopen = (a: PciAddress): PciDevice => this.watchKernel(this.open(a));
    const input: DeviceActorInput = {
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
      ...(this.options.inspect === undefined ? {} : { inspect: this.options.inspect }),
      name: claim.name,
      configPath: claim.entry.path,
      services: this.services,
    };
    // The first actor of an address is known to the system by it; a later one (claimed again) by it and its number.
    const systemId = this.holdings.some((h) => h.claim.address === address) ? `${address}#${this.spawned}` : address;
    this.spawned++;
    this.actor.send({ type: 'CLAIM', spawn: { claim, input, systemId } });
    const ref = this.actor.getSnapshot().context.devices.at(-1)!;
    const holding: Holding = { ref, claim, identity: entryIdentity(claim.entry), output: undefined };
    this.holdings.push(holding);
    this.held.set(address, holding);
    this.watchKernel(claim.device);
    if (this.watching) this.watch(holding);
    if (this.started) ref.send({ type: 'START' });
    void this.outcomeOf(ref, claim).then((output) => {
      holding.output = output;
      this.checkSettled();
    });
  }

  private checkSettled(): void {
    if (this.holdings.every((h) => h.output !== undefined) && (this.watcher === undefined || this.stopping !== undefined)) {
      this.settle(this.holdings.map((h) => h.output!));
    }
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
        this.withdrawn.set(address, 'until-unbound');
        this.held.get(address)?.ref.send({ type: 'REQUEST' });
      },
      error: () => {
        const now = device.isOpen ? device.uncorrectableErrors() : undefined;
        const cause = pcieErrorCause(this.pcieErrors.get(address), now);
        this.pcieErrors.set(address, now);
        this.held.get(address)?.ref.send({ type: 'PCIE_ERROR', message: `uncorrectable PCIe error reported by the kernel (AER): ${cause}` });
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

  /** The watcher saw a change: what it means for the devices the kernel took back, then a reconcile. */
  private deviceChanged(change: DeviceChange): void {
    if (!('address' in change)) {
      this.failed.clear();
    } else {
      const { action, address } = change;
      const withdrawn = this.withdrawn.get(address);
      if (action === 'remove' || action === 'add') this.withdrawn.delete(address);
      else if (action === 'unbind' && withdrawn === 'until-unbound') this.withdrawn.set(address, 'until-rebound');
      else if (action === 'bind' && withdrawn === 'until-rebound' && this.watcher?.present().find((d) => d.address === address)?.driver === 'vfio-pci') this.withdrawn.delete(address);
      if (action === 'add' || action === 'remove' || action === 'bind') this.failed.delete(address);
    }
    this.reconcile();
  }

  /**
   * The devices present: the watcher's; without one, those the address entries name, taken to be there and bound
   * (opening one says otherwise).
   */
  private present(entries: readonly DeviceEntry[]): PresentDevice[] {
    if (this.watcher !== undefined) return this.watcher.present();
    return entries.flatMap((e) => (e.address === undefined ? [] : [{
      address: e.address, vendor: -1, device: -1, classCode: -1, subsystemVendor: -1, subsystemDevice: -1, driver: 'vfio-pci', slot: undefined,
    }]));
  }

  private heldDevices(): Map<PciAddress, HeldDevice> {
    return new Map([...this.held].map(([address, h]) => [address, { address, identity: h.identity }]));
  }

  /** Brings the held set to what the config wants of the devices present (actors/reconcile.ts). */
  private reconcile(): void {
    if (!this.started || this.stopping !== undefined) return;
    for (const step of plan(this.config.devices, this.present(this.config.devices), this.heldDevices(), new Set(this.withdrawn.keys()), this.failed)) this.apply(step);
  }

  private apply(step: Step): void {
    const { address } = step;
    const note = (message: string) => this.emit({ type: 'note', at: Date.now(), address, message });
    switch (step.kind) {
      case 'release':
      case 'restart': {
        const holding = this.held.get(address);
        if (holding === undefined || this.releasing.has(address)) return;
        this.releasing.add(address);
        note(step.kind === 'release' ? 'no entry of the config wants it any more: releasing it' : `its entry ${step.entry.path} changed: restarting it (released, then claimed again)`);
        holding.ref.send({ type: 'STOP' });
        return;
      }
      case 'unbound':
        this.failed.set(address, entryIdentity(step.entry));
        note(`${step.entry.path} wants it, but it is ${step.driver === undefined ? 'bound to no driver' : `bound to ${step.driver}`}, not to vfio-pci: `
          + `left alone (fix: "bind": true in ${step.entry.path} lets the host bind it, as root; or \`upci bind ${address}\`)`);
        return;
      case 'bind':
      case 'claim':
        try {
          if (step.kind === 'bind') {
            note(`${step.entry.path} wants it: binding it to vfio-pci`);
            this.watcher?.bind(address);
          }
          this.spawn(claimOne(step.entry, address, this.registry, this.open));
        } catch (e) {
          if (!(e instanceof Error)) throw e;
          this.failed.set(address, entryIdentity(step.entry));
          note(`not claimed for ${step.entry.path}: ${e.message.split('\n').join('; ')}`);
        }
        return;
    }
  }

  /**
   * Replaces the config of a running host (what `upci run` does on SIGHUP): devices of new entries are claimed,
   * those no entry wants are released, those whose entry changed are restarted (released, then claimed for the new
   * entry); the others are not touched. New address entries are claimed first, all or nothing, as at start: if one
   * cannot be, the ConfigError is thrown and nothing has changed. So is a change of the exports (not reloaded),
   * and so is what `load` throws (a file that does not parse or validate). Each refusal is a 'reload-refused' event.
   */
  async reconfigure(load: () => HostConfig | Promise<HostConfig>): Promise<ReconfigureReport> {
    try {
      const next = await load();
      if (this.stopping !== undefined) throw new ConfigError('(config)', 'not reloaded: the host is stopping');
      if (JSON.stringify(next.exports) !== JSON.stringify(this.config.exports)) {
        throw new ConfigError('exports', 'cannot change while the host runs', { fix: 'restart `upci run` to change its exports' });
      }
      const known = new Set(this.config.devices.map(entryIdentity));
      const opened: Claim[] = [];
      try {
        for (const entry of next.devices) {
          if (entry.address === undefined || known.has(entryIdentity(entry)) || this.held.has(entry.address) || this.withdrawn.has(entry.address)) continue;
          if (entry.bind && this.watcher?.present().find((d) => d.address === entry.address)?.driver !== 'vfio-pci') this.watcher?.bind(entry.address);
          opened.push(claimOne(entry, entry.address, this.registry, this.open));
        }
      } catch (e) {
        for (const c of opened) c.device.close();
        throw e;
      }
      const before = new Set(this.held.keys());
      this.config = next;
      for (const claim of opened) this.spawn(claim);
      const steps = plan(next.devices, this.present(next.devices), this.heldDevices(), new Set(this.withdrawn.keys()), this.failed);
      for (const step of steps) this.apply(step);
      if (this.started && this.statsTimer !== undefined) this.startStats();
      const report: ReconfigureReport = {
        claimed: [...this.held.keys()].filter((a) => !before.has(a)),
        released: steps.flatMap((s) => (s.kind === 'release' ? [s.address] : [])),
        restarted: steps.flatMap((s) => (s.kind === 'restart' ? [s.address] : [])),
      };
      const list = (what: string, addresses: PciAddress[]) => `${what} ${addresses.length === 0 ? 'none' : addresses.join(' ')}`;
      this.emit({ type: 'host', at: Date.now(), phase: 'reloaded', detail: `${list('claimed', report.claimed)}; ${list('released', report.released)}; ${list('restarted', report.restarted)}` });
      return report;
    } catch (e) {
      if (e instanceof Error) this.emit({ type: 'host', at: Date.now(), phase: 'reload-refused', detail: e.message.split('\n')[0]! });
      throw e;
    }
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
    for (const holding of this.holdings) this.watch(holding);
  }

  /** Reports every transition of a device actor, and the fault, restart and release details that go with them. */
  private watch(holding: Holding): void {
    const { ref, claim } = holding;
    const { address } = claim;
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
        this.ended(holding, snapshot.output.outcome);
        this.servicesEnded(address, why);
      }
    };
    // An actor's subscribers get its next snapshots, not the current one.
    report(ref.getSnapshot());
    ref.subscribe(report);
  }

  /**
   * A device actor ended: the address is free for the reconciler. A driver that ended by itself (given up, lost,
   * finished) is not claimed again for the same entry until the device changes; one the kernel took back waits in
   * `withdrawn`; one the reconciler released (a removed or changed entry) may be claimed again at once.
   */
  private ended(holding: Holding, outcome: DeviceOutput['outcome']): void {
    const { address } = holding.claim;
    if (this.held.get(address) !== holding) return;
    this.held.delete(address);
    const asked = this.releasing.delete(address);
    if (!asked && outcome.kind !== 'removed') this.failed.set(address, holding.identity);
    // After the subscribers of this snapshot: a claim from here would spawn inside the ended actor's notification.
    queueMicrotask(() => this.reconcile());
  }

  /**
   * What a released device provided will not come back (unless it is claimed again): consumers waiting for it, or
   * asking later, are refused at once with `reason`; once every device is released and none can come, so is any ask.
   */
  private servicesEnded(address: PciAddress, reason: string): void {
    this.services.retire(address, reason);
    if (this.held.size === 0 && (this.watcher === undefined || this.stopping !== undefined)) this.services.endAll('every device of this host has been released');
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
      return { address: claim.address, outcome: { kind: 'lost', error }, restarts: ref.getSnapshot().context.restarts, released: { how: 'close', error } };
    }
  }

  start(): void {
    this.emit({ type: 'host', at: Date.now(), phase: 'running' });
    this.watchAll();
    this.actor.send({ type: 'START' });
    this.exports.start();
    this.started = true;
    this.reconcile();
    this.startStats();
  }

  /** The stats events, every statsIntervalMs (started again when a reload changes it). */
  private startStats(): void {
    clearInterval(this.statsTimer);
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
    this.held.get(address)?.ref.send({ type: 'RELOAD' });
  }

  /** The modules of the drivers this host runs in worker threads, with the devices each drives (what `--watch` watches). */
  driverModules(): Map<string, PciAddress[]> {
    const files = new Map<string, PciAddress[]>();
    for (const { claim } of this.held.values()) {
      const file = moduleFileOf(claim.driver);
      if (file !== undefined) files.set(file, [...(files.get(file) ?? []), claim.address]);
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
      this.watcher?.close();
      this.actor.send({ type: 'SHUTDOWN' });
      // Every device may have ended already (taken back by the kernel): then nothing more will come.
      this.checkSettled();
      if (this.held.size === 0) this.services.endAll('every device of this host has been released');
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
    this.watcher?.close();
    const snapshots = this.holdings.map(({ ref }) => ref.getSnapshot());
    this.actor.stop();
    this.settle(snapshots.map((snapshot, i): DeviceOutput => {
      if (snapshot.status === 'done') return snapshot.output;
      const { device, restarts, attachment } = snapshot.context;
      let error: string | undefined;
      try {
        device.close();
      } catch (e) {
        // Closing continues with the next device: a forced stop must not leave any open.
        error = e instanceof Error ? e.message : String(e);
      }
      attachment?.abandon();
      return { address: this.holdings[i]!.claim.address, outcome: { kind: 'forced' }, restarts, released: { how: 'close', error } };
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
