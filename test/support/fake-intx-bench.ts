/**
 * Fake functions with one INTx each on a fake kernel port, for the host's unit tests: vendor 0x1234 and a device ID
 * per address, config space in a Buffer kept across reopens, and each device's INTx eventfd, which fire() signals as
 * the kernel would on an interrupt. What else the fake does (DMA, reset, close, a request channel) is the test's.
 */
import * as libc from '../../kernel/libc.js';
import { UpciError } from '../../kernel/errors.js';
import type { PciAddress } from '../../kernel/pci-address.js';
import type { DeviceFile, KernelPort } from '../../kernel/port.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../pci/config.js';
import { PciDevice } from '../../pci/device.js';
import { fakeDevice } from './fake-device.js';

/** What fakeDevice takes beyond the INTx handling this bench does. */
export type FakeFileParts = Parameters<typeof fakeDevice>[2];

export abstract class FakeIntxBench {
  readonly opens = new Map<string, number>();
  readonly configs = new Map<string, Buffer>();
  readonly intxFds = new Map<string, number>();
  /** Kernel-port calls in the order they came, as the test words them. */
  readonly calls: string[] = [];

  port(): KernelPort {
    return { name: 'fake', open: (address) => this.file(address) };
  }

  open = (address: PciAddress): PciDevice => PciDevice.open(address, { port: this.port() });

  /** The device ID at `address`, or undefined where there is no device. */
  protected abstract deviceId(address: PciAddress): number | undefined;

  /** The rest of the fake at `address`, made at each open; `vectorsOff` runs before its INTx eventfd is forgotten. */
  protected abstract parts(address: PciAddress): FakeFileParts & { vectorsOff?: () => void };

  private file(address: PciAddress): DeviceFile {
    const deviceId = this.deviceId(address);
    if (deviceId === undefined) throw new UpciError('NO_DEVICE', `no PCI device at ${address}`);
    this.opens.set(address, (this.opens.get(address) ?? 0) + 1);
    const config = this.configs.get(address) ?? Buffer.alloc(256);
    config.writeUInt16LE(0x1234, 0);
    config.writeUInt16LE(deviceId, 2);
    this.configs.set(address, config);
    const { vectorsOff, ...parts } = this.parts(address);
    return fakeDevice(address, { intx: 1 }, {
      ...parts,
      enableIrqs: () => {
        const fd = libc.eventfd(libc.EFD_NONBLOCK);
        this.intxFds.set(address, fd);
        return [{ fd, format: 'counter', firstVector: 0, vectors: 1, owner: 'hub' }];
      },
      disableIrqs: () => {
        vectorsOff?.();
        this.intxFds.delete(address);
      },
    }, config).file;
  }

  /** Signals the device's INTx eventfd, as the kernel would on an interrupt. */
  fire(address: string): void {
    const fd = this.intxFds.get(address);
    if (fd === undefined) throw new Error(`${address} has no INTx established`);
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    libc.writeAll(fd, one, 'fake interrupt');
  }

  busMaster(address: string): boolean {
    return (this.configs.get(address)!.readUInt16LE(PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;
  }
}
