/**
 * A PCI function opened for a userland driver: config space, BARs as
 * bus_space handles (pci_mapreg_map), reset and release. Drivers use this and
 * never the kernel port underneath.
 */
import { UpciError } from '../kernel/errors.js';
import { parsePciAddress, type PciAddress } from '../kernel/pci-address.js';
import type { DeviceFile, DeviceHandles, DmaWindow, KernelChannel, KernelPort, PcieErrorCount, RegionInfo } from '../kernel/port.js';
import { mapShared, revoke } from '../shm/mapping.js';
import { MappedSpace, TrappedSpace, type BusSpace } from './bus-space.js';
import {
  CONFIG_SPACE_SIZE, PCI_COMMAND, PCI_COMMAND_MASTER, decodeBars, decodeMsi, decodeMsix, readBarRegisters, readHeader, walkCapabilities,
  type BarDecoding, type Capability, type ConfigHeader, type ConfigReader, type MsiCapability, type MsixCapability, type Width,
} from './config.js';
import { defaultKernelPort } from './kernel-port.js';
import { quiesce } from './teardown.js';
import { watchSource, type SourceWatch } from '../kernel/interrupt-watcher.js';

const CONFIG_REGION = 7;

export interface Bar extends BarDecoding {
  /** Size the kernel reports for the region. */
  readonly size: number;
  /** Whether mapBar gives a SharedArrayBuffer mapping (else accesses go through the kernel). */
  readonly mappable: boolean;
}

export class ConfigSpace implements ConfigReader {
  /**
   * The command register as last read. Only writes through this object can
   * change it (a device does not write its own command register), so it is
   * re-read after such a write or a reset, not on every bus-master check.
   */
  private command: number | undefined;

  constructor(
    private readonly file: DeviceFile,
    readonly size: number,
  ) {}

  private check(width: Width, offset: number): void {
    if (!(offset >= 0 && offset + width <= this.size) || offset % width !== 0) {
      throw new UpciError('OUT_OF_RANGE', `config space: a ${width}-byte access at 0x${Number(offset).toString(16)} is misaligned or beyond its ${this.size} bytes`);
    }
  }

  read(width: Width, offset: number): number {
    this.check(width, offset);
    const buf = Buffer.alloc(width);
    this.file.readRegion(CONFIG_REGION, offset, buf);
    return width === 1 ? buf.readUInt8(0) : width === 2 ? buf.readUInt16LE(0) : buf.readUInt32LE(0);
  }

  write(width: Width, offset: number, value: number): void {
    this.check(width, offset);
    const buf = Buffer.alloc(width);
    if (width === 1) buf.writeUInt8(value & 0xff);
    else if (width === 2) buf.writeUInt16LE(value & 0xffff);
    else buf.writeUInt32LE(value >>> 0);
    this.file.writeRegion(CONFIG_REGION, offset, buf);
    if (offset <= PCI_COMMAND + 1 && offset + width > PCI_COMMAND) this.command = undefined;
  }

  /** PCI_COMMAND, from the shadow when nothing can have changed it. */
  commandRegister(): number {
    return (this.command ??= this.read(2, PCI_COMMAND));
  }

  /** @internal After a reset the device's registers are its defaults again. */
  forgetShadow(): void {
    this.command = undefined;
  }

  /** Read-modify-write of a register: clears `clear`, then sets `set`. */
  update(width: Width, offset: number, clear: number, set: number): void {
    this.write(width, offset, (this.read(width, offset) & ~clear) | set);
  }
}

export interface OpenOptions {
  readonly port?: KernelPort;
}

/**
 * An open device as another thread of the process can take it up
 * (PciDevice.adopt): the kernel handles, and the BARs the opener mapped, so
 * that the opener can revoke those mappings whatever the other thread does.
 */
export interface SharedDevice {
  /** With the DMA window the opener reserved for the other thread (DeviceHandles.dmaWindow). */
  readonly handles: DeviceHandles;
  /** Mappable memory BARs by index, mapped by the opener. */
  readonly bars: ReadonlyMap<number, SharedArrayBuffer>;
}

/** What the opener keeps of one share(). */
interface Share {
  readonly bars: Map<number, SharedArrayBuffer>;
  readonly window: DmaWindow;
}

export class PciDevice {
  readonly config: ConfigSpace;
  private readonly spaces = new Set<BusSpace>();
  private releaseHooks: { interrupts: (() => void)[]; dma: (() => void)[] } = { interrupts: [], dma: [] };
  private closed = false;
  /** The kernel's channels about the device, watched in this thread (onKernelChannel); unwatched at close. */
  private readonly channelWatches = new Map<KernelChannel, SourceWatch>();

  /** Functions open in this process, per kernel port: two owners of one function in a process is a bug, refused. */
  private static readonly claimed = new WeakMap<KernelPort, Set<PciAddress>>();

  private constructor(
    private readonly file: DeviceFile,
    private readonly unclaim: () => void,
    /** BARs mapped by the thread that opened the device (adopt); mapBar hands these out instead of mapping again. */
    private readonly premapped: ReadonlyMap<number, SharedArrayBuffer> = new Map(),
  ) {
    this.config = new ConfigSpace(file, file.region(CONFIG_REGION).size);
  }

  /**
   * Takes up, in this thread, a device another thread opened and shared
   * (share()): the same kernel handles, which close() here leaves open. Only
   * that thread claims and releases the device.
   */
  static adopt(shared: SharedDevice, options: OpenOptions = {}): PciDevice {
    const port = options.port ?? defaultKernelPort();
    if (port.adopt === undefined) throw new UpciError('KERNEL', `the ${port.name} kernel port cannot share a device across threads`);
    return new PciDevice(port.adopt(shared.handles), () => {}, shared.bars);
  }

  /**
   * The device for another thread (PciDevice.adopt), or undefined when the
   * kernel port cannot share it. Every mappable memory BAR is mapped here,
   * and a window of the device's DMA space is reserved for that thread
   * (DmaDomain.reserveWindow), so that its DMA can be taken back without
   * its help and without touching anyone else's: unmapSharedDma(),
   * revokeShared(), and endShare() once the thread is gone.
   */
  share(): SharedDevice | undefined {
    this.live();
    const handles = this.file.handles;
    if (handles === undefined) return undefined;
    const window = this.file.dma.reserveWindow();
    const bars = new Map<number, SharedArrayBuffer>();
    try {
      for (const bar of this.bars()) {
        const region = this.file.region(bar.index);
        if (bar.type !== 'io' && isWhollyMappable(region)) bars.set(bar.index, mapShared(this.file.mmapSource(bar.index, region.mmapAreas[0]!)));
      }
    } catch (e) {
      for (const buffer of bars.values()) revoke(buffer);
      window.release();
      throw e;
    }
    const shared: SharedDevice = { handles: { ...handles, dmaWindow: window.ranges }, bars };
    this.shares.set(shared, { bars, window });
    return shared;
  }

  /** Removes every DMA mapping inside the share's window, whatever the thread that took it up is doing; others' mappings stay. */
  unmapSharedDma(shared: SharedDevice): void {
    this.shares.get(shared)?.window.unmap();
  }

  /** Revokes every BAR mapping share() made: views of them in any thread read all-ones and reach nothing. */
  revokeShared(): void {
    for (const { bars } of this.shares.values()) {
      for (const buffer of bars.values()) revoke(buffer);
      bars.clear();
    }
  }

  /**
   * Once the thread that took the share up is gone: its BARs revoked, its
   * window unmapped again (a map it made while being taken back) and given
   * back to the domain. Idempotent.
   */
  endShare(shared: SharedDevice): void {
    const share = this.shares.get(shared);
    if (share === undefined) return;
    for (const buffer of share.bars.values()) revoke(buffer);
    share.bars.clear();
    share.window.release();
    this.shares.delete(shared);
  }

  private readonly shares = new Map<SharedDevice, Share>();

  /** Claims the function at `address` through the kernel (VFIO on Linux). */
  static open(address: string, options: OpenOptions = {}): PciDevice {
    const port = options.port ?? defaultKernelPort();
    const parsed = parsePciAddress(address);
    let claimed = PciDevice.claimed.get(port);
    if (claimed === undefined) PciDevice.claimed.set(port, (claimed = new Set()));
    if (claimed.has(parsed)) {
      throw new UpciError('BUSY', `${parsed} is already open in this process`, 'close the other PciDevice first, or share it');
    }
    const file = port.open(parsed);
    let device: PciDevice;
    try {
      device = new PciDevice(file, () => claimed.delete(parsed));
    } catch (e) {
      file.close();
      throw e;
    }
    claimed.add(parsed);
    return device;
  }

  get address(): PciAddress {
    return this.file.address;
  }

  /** The kernel-side handle, for the pci_intr and bus_dma layers built on this device. */
  get kernel(): DeviceFile {
    this.live();
    return this.file;
  }

  header(): ConfigHeader {
    return readHeader(this.config);
  }

  bars(): Bar[] {
    return decodeBars(readBarRegisters(this.config)).map((bar) => {
      const region: RegionInfo = this.file.region(bar.index);
      return { ...bar, size: region.size, mappable: isWhollyMappable(region) };
    });
  }

  capabilities(): Capability[] {
    return walkCapabilities(this.config, Math.max(this.config.size, CONFIG_SPACE_SIZE));
  }

  msi(): MsiCapability | undefined {
    const cap = this.capabilities().find((c) => !c.extended && c.name === 'msi');
    return cap && decodeMsi(this.config, cap.offset);
  }

  msix(): MsixCapability | undefined {
    const cap = this.capabilities().find((c) => !c.extended && c.name === 'msi-x');
    return cap && decodeMsix(this.config, cap.offset);
  }

  /**
   * pci_mapreg_map: a bus_space handle for BAR `index`. Memory BARs the
   * kernel lets us mmap become SharedArrayBuffer mappings; I/O BARs and the
   * rest are reached through the kernel, with the same API.
   */
  mapBar(index: number): BusSpace {
    this.live();
    const bar = this.bars().find((b) => b.index === index);
    if (bar === undefined) {
      throw new UpciError('NO_SUCH_REGION', `${this.address} has no BAR ${index}`, `its BARs are ${this.bars().map((b) => b.index).join(', ') || 'none'}`);
    }
    const region = this.file.region(index);
    const label = `${this.address} BAR${index}`;
    const space: BusSpace = bar.type !== 'io' && isWhollyMappable(region)
      ? new MappedSpace(this.premapped.get(index) ?? mapShared(this.file.mmapSource(index, region.mmapAreas[0]!)), region.size, label)
      : new TrappedSpace(this.file, index, region.size, label);
    this.spaces.add(space);
    return space;
  }

  /** Releases a handle from mapBar early; close() releases the rest. */
  unmapBar(space: BusSpace): void {
    space.release();
    this.spaces.delete(space);
  }

  /** Lets the device master the bus: DMA, and MSI/MSI-X messages, which are DMA writes. */
  enableBusMaster(): void {
    this.live();
    this.config.update(2, PCI_COMMAND, 0, PCI_COMMAND_MASTER);
  }

  /** Stops every DMA and MSI of the device. */
  disableBusMaster(): void {
    this.live();
    this.config.update(2, PCI_COMMAND, PCI_COMMAND_MASTER, 0);
  }

  get busMasterEnabled(): boolean {
    return (this.config.commandRegister() & PCI_COMMAND_MASTER) !== 0;
  }

  reset(): void {
    this.live();
    try {
      this.file.reset();
    } finally {
      this.config.forgetShadow();
    }
  }

  /**
   * Registers teardown for a resource built on this device (interrupt
   * vectors, DMA mappings). Hooks run at close in quiesce()'s order (each
   * kind newest first), after bus mastering is off and before the kernel
   * handle closes, so the device can no longer touch what they free.
   */
  onRelease(hook: () => void, kind: 'interrupts' | 'dma'): void {
    this.live();
    this.releaseHooks[kind].push(hook);
  }

  /**
   * Watches one of the kernel's channels about the device
   * (DeviceFile.enableChannel) in this thread's event loop (uv_poll, no
   * timer): `listener` runs each time the kernel signals it, with how many
   * signals were counted: 'request' when it asks for the device back (an
   * unbind of vfio-pci, a hot-unplug; asked again until close()), 'error'
   * when it reports an uncorrectable PCIe error of the function (AER).
   * False when the device has no such channel (it is still usable). The
   * watch ends at close(), before the kernel handle closes.
   */
  onKernelChannel(channel: KernelChannel, listener: (count: number) => void): boolean {
    this.live();
    if (this.channelWatches.has(channel)) throw new UpciError('BUSY', `${this.address}: its ${channel} channel is already watched`);
    const source = this.file.enableChannel?.(channel);
    if (source === undefined) return false;
    this.channelWatches.set(channel, watchSource(source, (_vector, count) => listener(count)));
    return true;
  }

  /** The uncorrectable PCIe errors the kernel counted for the function (DeviceFile.uncorrectableErrors); undefined when it keeps no count. */
  uncorrectableErrors(): readonly PcieErrorCount[] | undefined {
    return this.file.uncorrectableErrors?.();
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  private unwatchChannels(): void {
    for (const watch of this.channelWatches.values()) watch.unwatch();
    this.channelWatches.clear();
  }

  private live(): void {
    if (this.closed) throw new UpciError('RELEASED', `${this.address} has been closed`, 'open it again with PciDevice.open');
  }

  /**
   * Gives the device back: bus mastering off first, so nothing it still has
   * queued can reach memory; then the release hooks (interrupts, DMA) newest
   * first; then every register mapping revoked and the kernel handle closed.
   * Idempotent; a failing step does not skip the later ones.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const { interrupts, dma } = this.releaseHooks;
    this.releaseHooks = { interrupts: [], dma: [] };
    quiesce(`closing ${this.address}`, {
      busMaster: () => this.config.update(2, PCI_COMMAND, PCI_COMMAND_MASTER, 0),
      interrupts: interrupts.reverse(),
      dma: [...dma.reverse(), ...[...this.shares.values()].map(({ window }) => () => window.release())],
      bars: [() => {
        for (const space of this.spaces) space.release();
        this.spaces.clear();
        this.revokeShared();
      }],
    }, { last: [() => this.unwatchChannels(), () => this.file.close(), this.unclaim] });
  }
}

function isWhollyMappable(region: RegionInfo): boolean {
  const area = region.mmapAreas[0];
  return region.mmapAreas.length === 1 && area !== undefined && area.offset === 0 && area.size === region.size;
}
