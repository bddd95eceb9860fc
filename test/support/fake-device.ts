/**
 * A DeviceFile with no hardware behind it, for unit tests of everything above
 * the kernel port. It refuses what VFIO refuses, so that a fake cannot pass
 * code the kernel would stop:
 *  - config space (region 7) is a buffer whose read-only fields (ids, class,
 *    header type, capability pointer, interrupt pin, status) ignore writes;
 *    an access past its end fails as pread/pwrite on the region would (EINVAL);
 *    the other regions have size 0 and every access to them fails;
 *  - the interrupt vectors offered come from config space, as VFIO reads them:
 *    INTx only with a non-zero interrupt pin, MSI from the MSI capability's
 *    Multiple Message Capable field, MSI-X from its table size;
 *  - enableIrqs refuses more vectors than offered, and a second kind while
 *    one is enabled (EINVAL), until disableIrqs;
 *  - reset() is refused without a reset method (canReset false); with one it
 *    returns config space to power-on state, keeping what the PCI core saves
 *    and restores around a reset (command register, BARs, interrupt line).
 * Each test overrides the parts it exercises (interrupt sources, DMA, reset);
 * the checks above run before an override is called.
 */
import { SyscallError } from '../../kernel/errors.js';
import { ManagedIommuDomain } from '../../kernel/linux/iommu-dma.js';
import * as libc from '../../kernel/libc.js';
import type { DeviceFile, IrqInfo, IrqKind, IrqSource, KernelChannel, KernelPort, RegionInfo } from '../../kernel/port.js';
import { PciDevice } from '../../pci/device.js';

export interface FakeDevice {
  readonly file: DeviceFile;
  /** The function's config space, as the device would answer it. */
  readonly config: Buffer;
}

/** The device's interrupt hardware, written into its config space (INTx pin A, an MSI and an MSI-X capability). */
export type FakeIrqCounts = Partial<Record<IrqKind, number>>;

const CONFIG_REGION = 7;
const EINVAL = 22;
const ENOTTY = 25;
const CAP_MSI = 0x05;
const CAP_MSIX = 0x11;
/** Header bytes a driver's write cannot change: ids, status, class, header type, subsystem, capability pointer, pin. */
const READ_ONLY_RANGES: readonly [number, number][] = [[0x00, 0x04], [0x06, 0x0c], [0x0e, 0x0f], [0x28, 0x30], [0x34, 0x35], [0x3d, 0x3e]];
/** What the PCI core saves before a function reset and restores after it. */
const RESTORED_RANGES: readonly [number, number][] = [[0x04, 0x06], [0x10, 0x28], [0x3c, 0x3d]];

/** Writes the interrupt hardware into config space: pin A, then MSI and MSI-X capabilities from 0x40. */
function writeIrqHardware(config: Buffer, counts: FakeIrqCounts): void {
  if ((counts.intx ?? 0) > 1) throw new Error('fakeDevice: a function has at most one INTx pin');
  if (counts.intx) config[0x3d] = 1;
  const caps: [number, Buffer][] = [];
  if (counts.msi) {
    const log2 = Math.log2(counts.msi);
    if (!Number.isInteger(log2) || log2 > 5) throw new Error('fakeDevice: MSI vectors must be a power of two up to 32');
    const body = Buffer.alloc(10);
    body.writeUInt16LE(log2 << 1, 0); // Message Control: Multiple Message Capable
    caps.push([CAP_MSI, body]);
  }
  if (counts.msix) {
    if (counts.msix > 2048) throw new Error('fakeDevice: MSI-X has at most 2048 vectors');
    const body = Buffer.alloc(10);
    body.writeUInt16LE(counts.msix - 1, 0); // Message Control: Table Size - 1
    caps.push([CAP_MSIX, body]);
  }
  let at = 0x40;
  caps.forEach(([id, body], i) => {
    if (i === 0) {
      config[0x34] = at;
      config.writeUInt16LE(config.readUInt16LE(0x06) | 0x10, 0x06); // Capabilities List
    }
    const next = i + 1 < caps.length ? at + 2 + body.length : 0;
    config[at] = id;
    config[at + 1] = next;
    body.copy(config, at + 2);
    at = next;
  });
}

/**
 * Where the MSI or MSI-X capability's Message Control register is, found with
 * a walk of its own (not pci/config.ts, which the tests check); undefined
 * when config space has none.
 */
export function messageControlAt(config: Buffer, kind: 'msi' | 'msix'): number | undefined {
  if ((config.readUInt16LE(0x06) & 0x10) === 0) return undefined;
  for (let at = config[0x34]! & 0xfc, steps = 0; at >= 0x40 && steps < 48; at = config[at + 1]! & 0xfc, steps++) {
    if (config[at] === (kind === 'msi' ? CAP_MSI : CAP_MSIX)) return at + 2;
  }
  return undefined;
}

/** Vectors offered per kind, read from config space. */
function offeredVectors(config: Buffer, kind: IrqKind): number {
  if (kind === 'intx') return config[0x3d] === 0 ? 0 : 1;
  const at = messageControlAt(config, kind);
  if (at === undefined) return 0;
  const control = config.readUInt16LE(at);
  return kind === 'msi' ? 1 << ((control >> 1) & 7) : (control & 0x7ff) + 1;
}

const inRanges = (offset: number, ranges: readonly [number, number][]) => ranges.some(([from, to]) => offset >= from && offset < to);

export function fakeDevice(
  address: string,
  irqCounts: FakeIrqCounts,
  overrides: Partial<Omit<DeviceFile, 'irqs' | 'regions' | 'region' | 'readRegion' | 'writeRegion'>> & Pick<DeviceFile, 'dma'>,
  config: Buffer = Buffer.alloc(256),
): FakeDevice {
  writeIrqHardware(config, irqCounts);
  const powerOn = Buffer.from(config);
  const regions: RegionInfo[] = Array.from({ length: 9 }, (_, index) => ({
    index, kind: index < 6 ? 'bar' : index === 6 ? 'rom' : index === 7 ? 'config' : 'vga', size: index === CONFIG_REGION ? config.length : 0, readable: true, writable: true, mmapAreas: [],
  }));
  const irq = (kind: IrqKind): IrqInfo => ({ kind, count: offeredVectors(config, kind), automasked: kind === 'intx', maskable: kind === 'intx' });
  const irqs = { intx: irq('intx'), msi: irq('msi'), msix: irq('msix') };
  const checkAccess = (what: string, index: number, offset: number, length: number) => {
    if (index !== CONFIG_REGION || offset < 0 || offset + length > config.length) {
      throw new SyscallError(`${what} of ${address} region ${index} at 0x${offset.toString(16)} (${length} bytes)`, EINVAL);
    }
  };
  let enabledKind: IrqKind | undefined;
  const {
    enableIrqs = () => [],
    disableIrqs = () => {},
    reset = () => {},
    ...rest
  } = overrides;
  const canReset = overrides.canReset ?? false;
  const file: DeviceFile = {
    address: address as DeviceFile['address'],
    mmapSource: () => {
      throw new Error('the fake device has no BAR to map');
    },
    unmaskIntx: () => {},
    close: () => {},
    ...rest,
    canReset,
    regions,
    irqs,
    region: (i) => regions[i]!,
    readRegion: (index, offset, buf) => {
      checkAccess('read', index, offset, buf.length);
      config.copy(buf, 0, offset, offset + buf.length);
    },
    writeRegion: (index, offset, buf) => {
      checkAccess('write', index, offset, buf.length);
      buf.forEach((byte, i) => {
        if (!inRanges(offset + i, READ_ONLY_RANGES)) config[offset + i] = byte;
      });
    },
    enableIrqs: (kind, count) => {
      if (count > irqs[kind].count || (enabledKind !== undefined && enabledKind !== kind)) {
        throw new SyscallError(`VFIO_DEVICE_SET_IRQS ${kind} x${count} (offered ${irqs[kind].count}, enabled ${enabledKind ?? 'none'})`, EINVAL);
      }
      const sources = enableIrqs(kind, count);
      enabledKind = kind;
      return sources;
    },
    disableIrqs: (kind) => {
      disableIrqs(kind);
      if (enabledKind === kind) enabledKind = undefined;
    },
    reset: () => {
      if (!canReset) throw new SyscallError(`VFIO_DEVICE_RESET ${address}`, ENOTTY);
      reset();
      const saved = Buffer.from(config);
      powerOn.copy(config);
      for (const [from, to] of RESTORED_RANGES) saved.copy(config, from, from, to);
    },
  };
  return { file, config };
}

/**
 * The DMA domain of an IOMMU that accepts every mapping and pins nothing, for
 * tests whose subject is not DMA (test/unit/bus-dma.test.ts has one that
 * refuses what VFIO type1 refuses).
 */
export function acceptingDma(): ManagedIommuDomain {
  return new ManagedIommuDomain({ iovaRanges: [{ start: 0n, end: (1n << 39n) - 1n }], pageSizes: 0x1000n, availableMappings: () => undefined, map: () => {}, unmap: (_iova, size) => size });
}

/** A kernel port that hands out the given device files. */
export function fakePort(files: (address: string) => DeviceFile): KernelPort {
  return { name: 'fake', open: (address) => files(address) };
}

export function openFake(fake: FakeDevice): PciDevice {
  return PciDevice.open(fake.file.address, { port: fakePort(() => fake.file) });
}

/**
 * One of a fake's kernel channels (DeviceFile.enableChannel): the eventfd
 * VFIO would signal when the kernel wants the device back (an unbind of
 * vfio-pci, a hot-unplug: 'request') or reports an uncorrectable PCIe error
 * of it ('error'). fire() signals it as the kernel does; the watcher that
 * took it (owner 'hub') closes it at the device's close, after which fire()
 * refuses, so a closed fd number is never written to.
 */
export class FakeChannel {
  private fd: number | undefined;
  /** enable calls: one per open of the device. */
  registrations = 0;

  constructor(readonly channel: KernelChannel) {}

  readonly enable = (): IrqSource => {
    const fd = libc.eventfd(libc.EFD_NONBLOCK);
    this.fd = fd;
    this.registrations++;
    return { fd, format: 'counter', firstVector: 0, vectors: 1, owner: 'hub' };
  };

  /** The device file was closed: its channel went with it. */
  closed(): void {
    this.fd = undefined;
  }

  get registered(): boolean {
    return this.fd !== undefined;
  }

  /** Signals the channel once, as vfio_pci_core_request and vfio_pci_core_aer_err_detected do (eventfd_signal). */
  fire(): void {
    if (this.fd === undefined) throw new Error(`no ${this.channel} channel registered (or the device is closed)`);
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    libc.writeAll(this.fd, one, `fake ${this.channel} signal`);
  }
}
