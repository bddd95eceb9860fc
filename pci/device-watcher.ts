/**
 * The PCI functions present on this machine, and their changes as they
 * happen: what the host's reconciler (actors/reconcile.ts) compares its
 * config with. On Linux: sysfs for what a function is, the kernel's uevents
 * (kernel/linux/uevents.ts, watched by this thread's loop like an
 * interrupt, no timer) for when to look again.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PciAddress } from '../kernel/pci-address.js';
import { bindVfio, defaultRoots, functionInfo, listFunctions, type PciFunctionInfo, type SysfsRoots } from '../kernel/linux/sysfs.js';
import { UeventSocket } from '../kernel/linux/uevents.js';
import { watchReadable, type SourceWatch } from '../kernel/interrupt-watcher.js';

/** A PCI function as the watcher sees it. */
export interface PresentDevice extends Pick<PciFunctionInfo, 'address' | 'vendor' | 'device' | 'classCode' | 'subsystemVendor' | 'subsystemDevice' | 'driver'> {
  /** The physical slot it sits in (its name under /sys/bus/pci/slots), if the platform names one. */
  readonly slot: string | undefined;
}

/** What changed: a function appeared ('add'), went ('remove'), got or lost a driver ('bind', 'unbind'), or anything ('rescan': events were lost). */
export type DeviceChange = { readonly action: string; readonly address: PciAddress } | { readonly action: 'rescan' };

export interface DeviceWatcher {
  /** The functions present now. */
  present(): PresentDevice[];
  /** Called after each change is reflected in present(). */
  onChange(listener: (change: DeviceChange) => void): void;
  /** Hands the function to vfio-pci (root only); throws UpciError naming the problem. */
  bind(address: PciAddress): void;
  close(): void;
}

/** slot names by the bus/device part of an address ("0000:03:00"), from /sys/bus/pci/slots/NAME/address. */
function slotNames(roots: SysfsRoots): Map<string, string> {
  const dir = join(roots.sys, 'bus/pci/slots');
  const names = new Map<string, string>();
  if (!existsSync(dir)) return names;
  for (const name of readdirSync(dir)) {
    try {
      names.set(readFileSync(join(dir, name, 'address'), 'utf8').trim(), name);
    } catch {
      // A slot without an address (no device behind it yet on some platforms) names nothing.
    }
  }
  return names;
}

const presentOf = (info: PciFunctionInfo, slots: Map<string, string>): PresentDevice => ({
  address: info.address,
  vendor: info.vendor,
  device: info.device,
  classCode: info.classCode,
  subsystemVendor: info.subsystemVendor,
  subsystemDevice: info.subsystemDevice,
  driver: info.driver,
  slot: slots.get(info.address.slice(0, -2)),
});

/** Linux: sysfs and the uevent socket. */
export class LinuxDeviceWatcher implements DeviceWatcher {
  private readonly devices = new Map<PciAddress, PresentDevice>();
  private readonly listeners: ((change: DeviceChange) => void)[] = [];
  private readonly watch: SourceWatch;

  private constructor(
    private readonly socket: UeventSocket,
    private readonly roots: SysfsRoots,
  ) {
    // The socket is open before the first scan, so nothing that happens in between is missed.
    this.rescan();
    this.watch = watchReadable(socket.fd, () => this.onReadable());
  }

  static open(roots: SysfsRoots = defaultRoots): LinuxDeviceWatcher {
    return new LinuxDeviceWatcher(UeventSocket.open(), roots);
  }

  present(): PresentDevice[] {
    return [...this.devices.values()];
  }

  onChange(listener: (change: DeviceChange) => void): void {
    this.listeners.push(listener);
  }

  bind(address: PciAddress): void {
    bindVfio(this.roots, address);
    this.refresh(address);
  }

  private rescan(): void {
    const slots = slotNames(this.roots);
    this.devices.clear();
    for (const info of listFunctions(this.roots)) this.devices.set(info.address, presentOf(info, slots));
  }

  /** Reads one function again; gone from sysfs, gone from the set. */
  private refresh(address: PciAddress): void {
    try {
      this.devices.set(address, presentOf(functionInfo(this.roots, address), slotNames(this.roots)));
    } catch {
      // Removed (or being removed: its attributes vanish one by one).
      this.devices.delete(address);
    }
  }

  private onReadable(): void {
    const events = this.socket.drain();
    if (events === 'overflow') {
      this.rescan();
      this.tell({ action: 'rescan' });
      return;
    }
    for (const e of events) {
      if (e.action === 'remove') this.devices.delete(e.address);
      else this.refresh(e.address);
      this.tell(e);
    }
  }

  private tell(change: DeviceChange): void {
    for (const listener of this.listeners) listener(change);
  }

  close(): void {
    this.watch.unwatch();
    this.socket.close();
  }
}
