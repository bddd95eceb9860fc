/**
 * A DeviceFile with no hardware behind it, for unit tests of everything above
 * the kernel port: config space is a buffer, there are no BARs to map, and
 * each test overrides the parts it exercises (interrupt sources, DMA, reset).
 */
import type { DeviceFile, IrqInfo, IrqKind, KernelPort, RegionInfo } from '../../kernel/port.js';
import { PciDevice } from '../../pci/device.js';

export interface FakeDevice {
  readonly file: DeviceFile;
  /** The function's config space, as the device would answer it. */
  readonly config: Buffer;
}

/** Vectors offered per interrupt kind; INTx is automasked and maskable, as VFIO reports it. */
export type FakeIrqCounts = Partial<Record<IrqKind, number>>;

export function fakeDevice(
  address: string,
  irqCounts: FakeIrqCounts,
  overrides: Partial<Omit<DeviceFile, 'irqs' | 'regions' | 'region' | 'readRegion' | 'writeRegion'>> & Pick<DeviceFile, 'dma'>,
  config: Buffer = Buffer.alloc(256),
): FakeDevice {
  const regions: RegionInfo[] = Array.from({ length: 9 }, (_, index) => ({
    index, kind: index < 6 ? 'bar' : index === 6 ? 'rom' : index === 7 ? 'config' : 'vga', size: index === 7 ? config.length : 0, readable: true, writable: true, mmapAreas: [],
  }));
  const irq = (kind: IrqKind): IrqInfo => ({ kind, count: irqCounts[kind] ?? 0, automasked: kind === 'intx', maskable: kind === 'intx' });
  const file: DeviceFile = {
    address: address as DeviceFile['address'],
    canReset: false,
    mmapSource: () => {
      throw new Error('the fake device has no BAR to map');
    },
    reset: () => {},
    enableIrqs: () => [],
    disableIrqs: () => {},
    unmaskIntx: () => {},
    close: () => {},
    ...overrides,
    regions,
    irqs: { intx: irq('intx'), msi: irq('msi'), msix: irq('msix') },
    region: (i) => regions[i]!,
    readRegion: (_i, offset, buf) => void config.copy(buf, 0, offset, offset + buf.length),
    writeRegion: (_i, offset, buf) => void buf.copy(config, offset),
  };
  return { file, config };
}

/** A kernel port that hands out the given device files. */
export function fakePort(files: (address: string) => DeviceFile): KernelPort {
  return { name: 'fake', open: (address) => files(address) };
}

export function openFake(fake: FakeDevice): PciDevice {
  return PciDevice.open(fake.file.address, { port: fakePort(() => fake.file) });
}
