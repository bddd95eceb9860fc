/**
 * The driver contract: what a driver module declares (the devices it
 * matches, its options, how it attaches) and what it is given. A driver's
 * behaviour is an XState v5 machine; it reaches its device only through
 * DriverBus, which hands out the public bus_space, bus_dma and pci_intr
 * objects and records them, so the host can quiesce and reclaim everything
 * a driver holds when it fails or is stopped.
 */
import type { Observable } from 'rxjs';
import type { ActorLogic, AnyActorLogic } from 'xstate';
import type { PciAddress } from '../kernel/pci-address.js';
import type { DriverDma } from '../pci/bus-dma.js';
import type { BusSpace } from '../pci/bus-space.js';
import type { ConfigHeader } from '../pci/config.js';
import type { Bar } from '../pci/device.js';
import type { DriverConfig } from '../pci/driver-config.js';
import type { InterruptEvent, InterruptOptions, InterruptType } from '../pci/intr.js';
import type { BlockDevice } from './block.js';
import type { DriverTimers } from './kit/timers.js';
import type { PacketBinding, PacketEndpoint, PacketPort } from './packet.js';

/** One line of a driver's match table; every field given must equal the device's. */
export interface DeviceMatch {
  readonly vendor?: number;
  readonly device?: number;
  /** 24-bit class code (base class, subclass, programming interface). */
  readonly classCode?: number;
  readonly subsystemVendor?: number;
  readonly subsystemDevice?: number;
}

export function matches(table: readonly DeviceMatch[], header: ConfigHeader): boolean {
  return table.some((m) =>
    (m.vendor === undefined || m.vendor === header.vendor)
    && (m.device === undefined || m.device === header.device)
    && (m.classCode === undefined || m.classCode === header.classCode)
    && (m.subsystemVendor === undefined || m.subsystemVendor === header.subsystemVendor)
    && (m.subsystemDevice === undefined || m.subsystemDevice === header.subsystemDevice));
}

/** One option a driver accepts; `doc` is shown to users, `default` makes it optional. */
export type OptionSpec =
  | { readonly type: 'integer'; readonly min?: number; readonly max?: number; readonly default?: number; readonly doc: string }
  | { readonly type: 'boolean'; readonly default?: boolean; readonly doc: string }
  | { readonly type: 'enum'; readonly values: readonly string[]; readonly default?: string; readonly doc: string };

export type OptionsSchema = Readonly<Record<string, OptionSpec>>;

type ValueOf<S extends OptionSpec> =
  S extends { type: 'integer' } ? number
    : S extends { type: 'boolean' } ? boolean
      : S extends { type: 'enum'; values: readonly (infer V)[] } ? V
        : never;

/** The options object a schema validates to: options with a default are always present. */
export type OptionsOf<S extends OptionsSchema> =
  { readonly [K in keyof S as S[K] extends { default: unknown } ? K : never]: ValueOf<S[K]> }
  & { readonly [K in keyof S as S[K] extends { default: unknown } ? never : K]?: ValueOf<S[K]> };

/**
 * A vector's interrupts as the driver sees them; INTx events are watched
 * until ack(). It lives until the driver is detached; interrupts that come
 * before a subscription, or while masked, are held and delivered as one
 * event (count > 1) at subscribe or unmask().
 */
export interface DriverVector {
  readonly index: number;
  readonly events: Observable<InterruptEvent>;
  /** Polled mode: hold this vector's interrupts until unmask(). */
  mask(): void;
  unmask(): void;
}

export interface DriverInterrupts {
  readonly type: InterruptType;
  readonly vectors: readonly DriverVector[];
}

/** Everything a driver may touch. Resources obtained here are reclaimed by the host at detach or failure. */
export interface DriverBus {
  readonly address: PciAddress;
  /** The config entry's name for this device ("name", default its address): what the driver's block devices are named after. */
  readonly name: string;
  /** 0 on the first attach, then one more after each supervised restart. */
  readonly incarnation: number;
  header(): ConfigHeader;
  bars(): Bar[];
  /**
   * The function's config space: any register and any capability read
   * (standard, extended, vendor-specific), written only where the register
   * is the driver's: the bus-master bit, the BARs and the MSI/MSI-X
   * capabilities are refused (HOST_OWNED), pci/driver-config.ts says which.
   */
  config(): DriverConfig;
  /** pci_mapreg_map. */
  mapBar(index: number): BusSpace;
  /** pci_intr_alloc + pci_intr_establish. */
  establishInterrupts(options?: InterruptOptions): DriverInterrupts;
  /** The device's bus_dma: tags (memory, maps, pools) and bus mastering. Establishing interrupts does not enable bus mastering: do it once the maps are loaded. */
  dma(): DriverDma;
  /** A short human-readable progress line for the host's event stream and status view. */
  note(message: string): void;
  /** Runs when the host takes the device back (detach, failure), before bus mastering goes off: fail what is in flight. */
  onRelease(hook: () => void): void;
  /**
   * This incarnation's timers (drivers/kit/timers.ts): timeouts, intervals,
   * polling passes and sleeps, all cancelled when the host takes the device
   * back (pending sleeps reject), so none outlives the incarnation.
   */
  timers(): DriverTimers;
  /**
   * The one way a driver reports its own failure (a throw while reaping, a
   * device asking to be reset, a failed self-test): the host takes it as a
   * driver crash, as if the machine had failed: quiesce, reset, restart by
   * the restart policy. The driver's machine is stopped; the first fault
   * counts, and one reported after the host took the device back is
   * ignored. A fault during attach is the crash of the machine it starts.
   * An XState action should call this rather than throw.
   */
  fault(error: unknown): void;
  /**
   * Offers a block device, under its name, to the host's programs
   * (DriverHost.blockDevice) and to other drivers (blockDevice below), in
   * any thread, until the host takes this device back. Each consumer thread
   * gets an export of its own (shared-memory rings, services/block-service.ts)
   * when it first asks; the device itself stays in this driver's thread.
   */
  provideBlockDevice(device: BlockDevice): void;
  /**
   * Another driver's block device `name` ("nvme0n1"), waiting up to
   * `timeoutMs` (default 30 s) until it is provided. From another thread
   * it is a proxy over shared-memory rings between the two driver threads
   * (per I/O nothing goes through the main thread); from the provider's own
   * thread, the device itself. The same object again on each call until the
   * provider's device is taken back (stopped, crashed, hung, reloaded): then
   * every pending and new request fails with BlockGoneError, and the next
   * call waits for the restarted provider's device. When this driver's own
   * device is taken back, the provider stops serving it.
   */
  blockDevice(name: string, timeoutMs?: number): Promise<BlockDevice>;
  /**
   * Offers a NIC's packet port (drivers/packet.ts) under this device's
   * name until the host takes the device back; returns what the driver
   * reports its frames, link and counters to. Programs reach it with
   * DriverHost.packetPort(name); from another thread, frames cross by
   * reference over shared-memory rings (services/packet-service.ts).
   */
  providePacketPort(binding: PacketBinding): PacketEndpoint;
  /**
   * Another driver's packet port `name` (its config entry's name), as
   * DriverHost.packetPort gives programs: bound to each incarnation of that
   * driver in turn (attached while one runs), its counters carried on.
   * Frames cross by reference over shared-memory rings between the two
   * driver threads. A packet port has one consumer at a time: while this
   * driver holds it, the host's programs and other drivers wait for it.
   * Released with this driver's device (its export stops). In the
   * provider's own thread it binds the provider's object, which stays
   * bound to it until the provider's take-back.
   */
  packetPort(name: string): PacketPort;
}

/** What the driver machine is started with. */
export interface DriverInput<O, R> {
  readonly bus: DriverBus;
  readonly options: O;
  readonly resources: R;
}

/**
 * The driver's behaviour while running: actor logic (an XState machine)
 * started with the DriverInput of its driver's options O and of what its
 * attach returned, R. Input is contravariant: a machine that expects other
 * resources or options than attach gives it does not compile.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type DriverMachine<O, R> = ActorLogic<any, any, DriverInput<O, R>, any, any>;

/**
 * A driver module. `attach` maps what the driver needs (it runs in the
 * device actor's attaching state and may throw); `machine` is the driver's
 * behaviour while running, started with a DriverInput. A fault the driver
 * reports (DriverBus.fault), and the machine failing (an invoked promise
 * that rejects, an action that throws: outside drivers may), is a driver
 * crash; reaching a final state means the driver is done with the device.
 */
export interface DriverModule<S extends OptionsSchema = OptionsSchema, R = unknown> {
  readonly name: string;
  readonly description: string;
  readonly match: readonly DeviceMatch[];
  readonly options: S;
  /** May be async (a controller reset, Identify); the host bounds it with the device's attachTimeoutMs. */
  attach(bus: DriverBus, options: OptionsOf<S>): R | Promise<R>;
  /** A clean detach (not after a failure): runs before the host quiesces the device, e.g. an NVMe CC.SHN shutdown. */
  detach?(bus: DriverBus, resources: R): void | Promise<void>;
  /**
   * Where the driver runs: 'own' (the default) in a worker thread of its own
   * per incarnation, so that a hang or a leak stops only it; 'main' in the
   * host's main thread, for a driver that hands the host objects no ring
   * carries (block devices and packet ports do cross: provideBlockDevice and
   * providePacketPort in a driver thread are served to every other thread
   * through shared-memory rings, services/service.ts). A hang in a 'main'
   * driver stops the whole host.
   */
  readonly thread?: 'own' | 'main';
  readonly machine: DriverMachine<OptionsOf<S>, R>;
}

/**
 * Declares a driver with its types checked against each other: R is what
 * attach returns, and the machine must accept a DriverInput of the options
 * and that R (test/unit/driver-types.test.ts shows what does not compile).
 */
export function defineDriver<S extends OptionsSchema, R>(
  module: DriverModule<S, R> & { readonly machine: DriverMachine<OptionsOf<NoInfer<S>>, NoInfer<R>> },
): DriverModule<S, R> {
  return module;
}

/** A driver of any options and resources, as registries hold them (its machine's input checked by defineDriver, not here). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyDriver = Omit<DriverModule<OptionsSchema, any>, 'machine'> & { readonly machine: AnyActorLogic };

/** Drivers by name. */
export type DriverRegistry = ReadonlyMap<string, AnyDriver>;
