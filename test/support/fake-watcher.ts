/**
 * A DeviceWatcher whose bus the test writes: functions appear, go, get or lose a driver when the test says, and
 * each change is told to the host as the kernel's uevents would be (after the set reflects it).
 */
import type { PciAddress } from '../../kernel/pci-address.js';
import type { DeviceChange, DeviceWatcher, PresentDevice } from '../../pci/device-watcher.js';

export class FakeWatcher implements DeviceWatcher {
  private readonly devices = new Map<PciAddress, PresentDevice>();
  private readonly listeners: ((change: DeviceChange) => void)[] = [];
  /** bind() calls, in order. */
  readonly binds: string[] = [];
  closed = false;

  /** `fields`: what differs from the fake bench's function (vendor 0x1234, device 0x0001, bound to vfio-pci). */
  add(address: string, fields: Partial<Omit<PresentDevice, 'address'>> = {}): void {
    const a = address as PciAddress;
    this.devices.set(a, {
      address: a, vendor: 0x1234, device: 0x0001, classCode: 0x00ff00, subsystemVendor: 0x1af4, subsystemDevice: 0x1100, driver: 'vfio-pci', slot: undefined,
      ...fields,
    });
    this.tell('add', a);
  }

  remove(address: string): void {
    this.devices.delete(address as PciAddress);
    this.tell('remove', address as PciAddress);
  }

  /** The function's driver changes ('bind' with a driver, 'unbind' without). */
  driver(address: string, driver: string | undefined): void {
    const a = address as PciAddress;
    this.devices.set(a, { ...this.devices.get(a)!, driver });
    this.tell(driver === undefined ? 'unbind' : 'bind', a);
  }

  present(): PresentDevice[] {
    return [...this.devices.values()];
  }

  onChange(listener: (change: DeviceChange) => void): void {
    this.listeners.push(listener);
  }

  bind(address: PciAddress): void {
    this.binds.push(address);
    this.devices.set(address, { ...this.devices.get(address)!, driver: 'vfio-pci' });
  }

  close(): void {
    this.closed = true;
  }

  private tell(action: string, address: PciAddress): void {
    for (const l of this.listeners) l({ action, address });
  }
}
