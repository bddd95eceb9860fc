/**
 * The DriverBus a driver gets at attach: hands out the device's public
 * bus_space, pci_intr and bus_dma objects, records each one, and puts a
 * watchdog on INTx events, so the device actor can take everything back
 * (quiesce) whether the driver stopped cleanly, crashed or hung.
 */
import { Observable } from 'rxjs';
import type { DriverBus, DriverInterrupts, DriverVector } from '../drivers/contract.js';
import { BusDma, type DriverDma } from '../pci/bus-dma.js';
import type { BusSpace } from '../pci/bus-space.js';
import type { ConfigHeader } from '../pci/config.js';
import type { Bar, PciDevice } from '../pci/device.js';
import { DriverConfigSpace, type DriverConfig } from '../pci/driver-config.js';
import { Interrupts, type InterruptEvent, type InterruptOptions, type InterruptType, type InterruptVector } from '../pci/intr.js';
import type { PacketBinding, PacketEndpoint, PacketPort } from '../drivers/packet.js';
import { NetPort, PACKET_WAIT_MS } from '../services/net-port.js';
import { LocalPacketSource, packetService } from '../services/packet-service.js';
import type { BlockDevice } from '../drivers/block.js';
import { quiesce } from '../pci/teardown.js';
import { blockService } from '../services/block-service.js';
import type { ServiceAccess } from '../services/service.js';
import { BusTimers, type DriverTimers } from '../drivers/kit/timers.js';

/** What a DriverBus reports as the driver uses it: DeviceMeter in the driver's thread, or the shared ledger of its worker. */
export interface BusMeter {
  countInterrupts(n: number): void;
  /** The bus_dma the driver asked for, or undefined once reclaimed. */
  dma: BusDma | undefined;
  /** The interrupt type enabled in the kernel, or undefined once released. */
  irqKind: InterruptType | undefined;
}

export interface BusHooks {
  readonly name: string;
  readonly watchdogMs: number;
  /** The services of the thread the driver runs in (services/service.ts). */
  readonly services: ServiceAccess;
  readonly meter: BusMeter;
  /** An INTx event was not acked within watchdogMs: the driver is hung with the line masked. */
  onStall(vector: number, waitedMs: number): void;
  onNote(message: string): void;
}

/**
 * The events of one vector, counted, with each INTx event's ack watched:
 * the watchdog starts when the event is delivered and stops at ack().
 */
function watched(vector: InterruptVector, type: InterruptType, hooks: BusHooks): Observable<InterruptEvent> {
  return new Observable<InterruptEvent>((subscriber) => {
    const timers = new Set<NodeJS.Timeout>();
    const inner = vector.events.subscribe({
      next: (event) => {
        hooks.meter.countInterrupts(event.count);
        // MSI and MSI-X need no ack to keep flowing: only a masked INTx line can hang.
        if (type !== 'intx') return subscriber.next(event);
        const timer = setTimeout(() => {
          timers.delete(timer);
          hooks.onStall(vector.index, hooks.watchdogMs);
        }, hooks.watchdogMs);
        timers.add(timer);
        subscriber.next({
          vector: event.vector,
          count: event.count,
          ack: (claimed?: boolean) => {
            clearTimeout(timer);
            timers.delete(timer);
            event.ack(claimed);
          },
        });
      },
      error: (e: unknown) => subscriber.error(e),
      complete: () => subscriber.complete(),
    });
    return () => {
      inner.unsubscribe();
      for (const t of timers) clearTimeout(t);
    };
  });
}

export class AttachedBus implements DriverBus {
  private readonly spaces: BusSpace[] = [];
  private readonly interrupts: Interrupts[] = [];
  private readonly releaseHooks: (() => void)[] = [];
  private busDma: BusDma | undefined;
  private driverConfig: DriverConfig | undefined;
  private released = false;
  /** release() has begun (its hooks may still note; `released` is set after them). */
  private reclaiming = false;
  private readonly busTimers = new BusTimers(() => this.reclaimed());
  /** The driver's first fault (DriverBus.fault), and who is told of it (its attach's runner, then its machine's: runDriverMachine). */
  private faulted: { error: unknown } | undefined;
  private readonly faultListeners: ((error: unknown) => void)[] = [];

  constructor(
    private readonly device: PciDevice,
    readonly incarnation: number,
    private readonly hooks: BusHooks,
  ) {}

  get address() {
    return this.device.address;
  }

  get name(): string {
    return this.hooks.name;
  }

  onRelease(hook: () => void): void {
    this.live();
    this.releaseHooks.push(hook);
  }

  provideBlockDevice(device: BlockDevice): void {
    this.live();
    this.releaseHooks.push(this.hooks.services.provide(blockService, device.name, device));
  }

  blockDevice(name: string, timeoutMs = 30_000): Promise<BlockDevice> {
    this.live();
    return this.hooks.services.consume(blockService, name, timeoutMs);
  }

  packetPort(name: string): PacketPort {
    this.live();
    const port = new NetPort(name, () => this.hooks.services.consume(packetService, name, PACKET_WAIT_MS), (reason) => this.hooks.services.release(packetService, name, reason));
    this.releaseHooks.push(() => port.close(`${this.name}, its consumer, was released`));
    return port;
  }

  providePacketPort(binding: PacketBinding): PacketEndpoint {
    this.live();
    const local = new LocalPacketSource(this.name, binding);
    const withdraw = this.hooks.services.provide(packetService, this.name, local);
    this.releaseHooks.push(() => {
      withdraw();
      local.close(`the host took ${this.address} back from its driver`);
    });
    return local.endpoint;
  }

  header(): ConfigHeader {
    return this.device.header();
  }

  bars(): Bar[] {
    return this.device.bars();
  }

  config(): DriverConfig {
    this.live();
    const space = this.device.config;
    // Each access checks the bus is still the driver's: after release config space is the host's again.
    return (this.driverConfig ??= new DriverConfigSpace({
      size: space.size,
      read: (width, offset) => {
        this.live();
        return space.read(width, offset);
      },
      write: (width, offset, value) => {
        this.live();
        space.write(width, offset, value);
      },
    }));
  }

  mapBar(index: number): BusSpace {
    this.live();
    const space = this.device.mapBar(index);
    this.spaces.push(space);
    return space;
  }

  establishInterrupts(options?: InterruptOptions): DriverInterrupts {
    this.live();
    const irq = Interrupts.establish(this.device, options);
    this.interrupts.push(irq);
    this.hooks.meter.irqKind = irq.type;
    const vectors: DriverVector[] = irq.vectors.map((v) => ({
      index: v.index,
      events: watched(v, irq.type, this.hooks),
      mask: () => v.mask(),
      unmask: () => v.unmask(),
    }));
    return { type: irq.type, vectors };
  }

  dma(): DriverDma {
    this.live();
    this.busDma ??= BusDma.forDevice(this.device);
    this.hooks.meter.dma = this.busDma;
    const dma = this.busDma;
    // Only these: the BusDma itself would reach the device and the kernel's DMA domain.
    return {
      createTag: (options) => dma.createTag(options),
      get granule() { return dma.granule; },
      get busMasterEnabled() { return dma.busMasterEnabled; },
      enableBusMaster: () => dma.enableBusMaster(),
      disableBusMaster: () => dma.disableBusMaster(),
    };
  }

  note(message: string): void {
    if (!this.released) this.hooks.onNote(message);
  }

  timers(): DriverTimers {
    this.live();
    return this.busTimers;
  }

  /** Refused silently once the host takes the device back: the crash it would report is already being handled. */
  fault(error: unknown): void {
    if (this.reclaiming || this.faulted !== undefined) return;
    this.faulted = { error };
    for (const listener of this.faultListeners) listener(error);
  }

  /** Tells `listener` of the driver's fault: now if it already reported one, else when it does. */
  onFault(listener: (error: unknown) => void): void {
    this.faultListeners.push(listener);
    if (this.faulted !== undefined) listener(this.faulted.error);
  }

  /** `attach` (the driver's), failed by a fault the driver reports while it runs (a throw while polling its admin queue). */
  attaching<R>(attach: () => R | Promise<R>): Promise<R> {
    const faulted = new Promise<never>((_, reject) => this.onFault(reject));
    return Promise.race([Promise.resolve().then(attach), faulted]);
  }

  private reclaimed(): Error {
    return new Error(`${this.address}: this DriverBus was reclaimed by the host (the driver was stopped)`);
  }

  private live(): void {
    if (this.released) throw this.reclaimed();
  }

  /**
   * Quiesce: bus mastering off first (no DMA, no MSI can leave the device),
   * then interrupts disabled in the kernel (their streams complete, which
   * also clears pending watchdogs), DMA maps unloaded and memory freed (the
   * IOMMU mappings go), BAR mappings revoked. Idempotent; every step runs
   * even if one fails, and the failures are thrown together.
   */
  release(): void {
    if (this.reclaiming) return;
    this.reclaiming = true;
    const dma = this.busDma;
    if (this.hooks.meter.dma === dma) this.hooks.meter.dma = undefined;
    const open = this.device.isOpen;
    quiesce(`quiescing ${this.address}`, {
      ...(open ? { busMaster: () => this.device.disableBusMaster() } : {}),
      interrupts: this.interrupts.map((irq) => () => {
        irq.release();
        if (this.hooks.meter.irqKind === irq.type) this.hooks.meter.irqKind = undefined;
      }),
      dma: open && dma !== undefined ? [() => dma.releaseMappings()] : [],
      bars: open ? [...this.spaces].map((space) => () => this.device.unmapBar(space)) : [],
    }, {
      // The driver's own hooks first (fail in-flight requests, withdraw block devices), newest first;
      // until they have run the driver may still note (e.g. its final counts), then the bus is the host's.
      // The timers go after the hooks (a hook may still cancel its own) and before anything else is reclaimed.
      first: [...this.releaseHooks.reverse(), () => this.busTimers.release(), () => void (this.released = true)],
    });
  }
}

/** Bus mastering off on a device that may have no DriverBus (a failed attach, a forced stop). */
export function stopBusMaster(device: PciDevice): void {
  if (device.isOpen) device.disableBusMaster();
}
