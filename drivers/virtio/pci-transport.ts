/**
 * The virtio 1.x PCI transport, modern interface only (virtio 1.x §4.1):
 * the vendor capabilities that place the common configuration, the notify
 * area, the ISR and the device configuration in the BARs; reset and the
 * status handshake; feature negotiation; split virtqueues in DMA memory
 * with one MSI-X vector each and config changes on a vector of their own.
 *
 * VIRTIO_F_ACCESS_PLATFORM is required, not only offered: without it the
 * device would take descriptor addresses as physical memory and bypass the
 * IOMMU, and every address upci hands a device is an IOVA.
 */
import { UpciError } from '../../kernel/errors.js';
import type { DmaTag } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DriverBus } from '../contract.js';
import { writeRegister64 } from '../kit/bus-address.js';
import { SplitRing } from './split-ring.js';

export const VIRTIO_VENDOR = 0x1af4;
/** Modern device ids are 0x1040 + the virtio device type (§4.1.2.1). */
export const modernDeviceId = (type: number) => 0x1040 + type;

export const F_VERSION_1 = 1n << 32n;
export const F_ACCESS_PLATFORM = 1n << 33n;

const CAP_VENDOR = 0x09;
const CFG_COMMON = 1;
const CFG_NOTIFY = 2;
const CFG_ISR = 3;
const CFG_DEVICE = 4;

const STATUS_ACKNOWLEDGE = 1;
const STATUS_DRIVER = 2;
const STATUS_DRIVER_OK = 4;
const STATUS_FEATURES_OK = 8;
const STATUS_NEEDS_RESET = 0x40;
const STATUS_FAILED = 0x80;

/** struct virtio_pci_common_cfg. */
const COMMON = {
  deviceFeatureSelect: 0x00, deviceFeature: 0x04, driverFeatureSelect: 0x08, driverFeature: 0x0c,
  configMsixVector: 0x10, numQueues: 0x12, deviceStatus: 0x14, configGeneration: 0x15,
  queueSelect: 0x16, queueSize: 0x18, queueMsixVector: 0x1a, queueEnable: 0x1c, queueNotifyOff: 0x1e,
  queueDesc: 0x20, queueDriver: 0x28, queueDevice: 0x30, bytes: 0x38,
} as const;
const NO_VECTOR = 0xffff;
const RESET_WAIT_MS = 1000;

/** One structure the capabilities place: a window of a BAR. */
export interface Window {
  readonly space: BusSpace;
  readonly offset: number;
  readonly length: number;
}

export class VirtioPci {
  private readonly common: Window;
  private readonly notify: Window;
  private readonly notifyMultiplier: number;
  /** The device-specific configuration (virtio-blk's capacity...): read it with readConfig(). */
  readonly device: Window;
  readonly queueCount: number;

  /** Finds the capabilities and maps the BARs they name (through the bus, which takes them back at release). */
  constructor(private readonly bus: DriverBus) {
    const cfg = bus.config();
    const spaces = new Map<number, BusSpace>();
    const windows = new Map<number, Window & { at: number }>();
    const bars = bus.bars();
    for (const cap of cfg.capabilitiesOf(CAP_VENDOR)) {
      const type = cfg.read(1, cap.offset + 3);
      // The first of each type is the one to use (§4.1.4: the device lists its preferred ones first); others, and types not used here, are skipped.
      if (![CFG_COMMON, CFG_NOTIFY, CFG_ISR, CFG_DEVICE].includes(type) || windows.has(type)) continue;
      const barIndex = cfg.read(1, cap.offset + 4);
      const offset = cfg.read(4, cap.offset + 8) >>> 0;
      const length = cfg.read(4, cap.offset + 12) >>> 0;
      const bar = bars.find((b) => b.index === barIndex && b.type !== 'io');
      if (bar === undefined || offset + length > bar.size) {
        throw new UpciError('UNSUPPORTED', `${bus.address}: virtio capability at 0x${cap.offset.toString(16)} places structure ${type} at BAR${barIndex} 0x${offset.toString(16)}+${length}, outside any memory BAR`, 'this is not a conforming virtio 1.x device');
      }
      let space = spaces.get(barIndex);
      if (space === undefined) spaces.set(barIndex, (space = bus.mapBar(barIndex)));
      windows.set(type, { space, offset, length, at: cap.offset });
    }
    const need = (type: number, what: string, bytes: number) => {
      const w = windows.get(type);
      if (w === undefined || w.length < bytes) {
        throw new UpciError('UNSUPPORTED', `${bus.address}: no virtio ${what} capability${w === undefined ? '' : ` of ${bytes} bytes or more`}`, 'upci drives virtio 1.x modern devices (QEMU: disable-legacy=on)');
      }
      return w;
    };
    this.common = need(CFG_COMMON, 'common configuration', COMMON.bytes);
    const notify = need(CFG_NOTIFY, 'notify', 2);
    this.notify = notify;
    this.notifyMultiplier = cfg.read(4, notify.at + 16) >>> 0;
    // The ISR is not read: with MSI-X each cause has its own vector. A conforming device has one all the same.
    need(CFG_ISR, 'ISR', 1);
    this.device = need(CFG_DEVICE, 'device configuration', 0);
    this.queueCount = this.read2(COMMON.numQueues);
  }

  private read1(at: number) { return this.common.space.read1(this.common.offset + at); }
  private read2(at: number) { return this.common.space.read2(this.common.offset + at); }
  private read4(at: number) { return this.common.space.read4(this.common.offset + at) >>> 0; }
  private write1(at: number, v: number) { this.common.space.write1(this.common.offset + at, v); }
  private write2(at: number, v: number) { this.common.space.write2(this.common.offset + at, v); }
  private write4(at: number, v: number) { this.common.space.write4(this.common.offset + at, v >>> 0); }
  /** 64-bit fields as two 32-bit writes, low first (§4.1.3.1 allows it; not every device takes a 64-bit access). */
  private write64(at: number, v: number) {
    writeRegister64(this.common.space, this.common.offset + at, v);
  }

  get status(): number {
    return this.read1(COMMON.deviceStatus);
  }

  /** The device says it needs a reset (an internal error): its state is lost. */
  get needsReset(): boolean {
    return (this.status & STATUS_NEEDS_RESET) !== 0;
  }

  /** Writes 0: the device drops its queues and stops its DMA. The host's release path, which cannot wait. */
  resetNow(): void {
    this.write1(COMMON.deviceStatus, 0);
  }

  /** Resets and waits until the device reads back 0, as the driver must before using it again (§2.4.1). */
  async reset(): Promise<void> {
    this.resetNow();
    const until = performance.now() + RESET_WAIT_MS;
    while (this.status !== 0) {
      if (performance.now() > until) throw new Error(`${this.bus.address}: the virtio device did not finish its reset within ${RESET_WAIT_MS} ms (status 0x${this.status.toString(16)})`);
      await this.bus.timers().sleep(1);
    }
  }

  private setStatus(bits: number): void {
    this.write1(COMMON.deviceStatus, this.status | bits);
  }

  /** Tells the device the driver gave up on it (§2.1.2); it may then be reset. */
  fail(): void {
    this.setStatus(STATUS_FAILED);
  }

  /**
   * Reset, ACKNOWLEDGE, DRIVER, then the features: `wanted` that the device
   * offers, plus VERSION_1 and ACCESS_PLATFORM, which it must offer; then
   * FEATURES_OK, checked (the device may refuse the set). The negotiated set.
   */
  async negotiate(wanted: bigint): Promise<bigint> {
    await this.reset();
    this.setStatus(STATUS_ACKNOWLEDGE);
    this.setStatus(STATUS_DRIVER);
    let offered = 0n;
    for (const half of [0, 1]) {
      this.write4(COMMON.deviceFeatureSelect, half);
      offered |= BigInt(this.read4(COMMON.deviceFeature)) << BigInt(32 * half);
    }
    for (const [bit, name, why] of [
      [F_VERSION_1, 'VIRTIO_F_VERSION_1', 'upci drives virtio 1.x devices only (QEMU: disable-legacy=on)'],
      [F_ACCESS_PLATFORM, 'VIRTIO_F_ACCESS_PLATFORM', 'the device\'s DMA must go through the IOMMU (QEMU: iommu_platform=on)'],
    ] as const) {
      if ((offered & bit) === 0n) {
        this.fail();
        throw new UpciError('NOT_OFFERED', `${this.bus.address}: the virtio device does not offer ${name}`, why);
      }
    }
    const accepted = (offered & wanted) | F_VERSION_1 | F_ACCESS_PLATFORM;
    for (const half of [0, 1]) {
      this.write4(COMMON.driverFeatureSelect, half);
      this.write4(COMMON.driverFeature, Number((accepted >> BigInt(32 * half)) & 0xffffffffn));
    }
    this.setStatus(STATUS_FEATURES_OK);
    if ((this.status & STATUS_FEATURES_OK) === 0) {
      this.fail();
      throw new UpciError('NOT_OFFERED', `${this.bus.address}: the virtio device refused features 0x${accepted.toString(16)} (FEATURES_OK did not stay set)`, 'report the device model: it offered them');
    }
    return accepted;
  }

  /** Config changes signal on MSI-X `vector` (read back: a device out of vectors says NO_VECTOR). */
  configVector(vector: number): void {
    this.write2(COMMON.configMsixVector, vector);
    if (this.read2(COMMON.configMsixVector) !== vector) throw new Error(`${this.bus.address}: the virtio device refused MSI-X vector ${vector} for config changes`);
  }

  /**
   * Queue `index` with at most `depth` entries (the device's maximum
   * otherwise), its rings in DMA memory of `tag`, completions on MSI-X
   * `vector`, enabled. The DMA memory lives until the bus is released.
   */
  setupQueue(index: number, depth: number, tag: DmaTag, vector: number): SplitRing {
    if (index >= this.queueCount) throw new UpciError('NOT_OFFERED', `${this.bus.address}: the virtio device has ${this.queueCount} queue(s), not ${index + 1}`);
    this.write2(COMMON.queueSelect, index);
    const max = this.read2(COMMON.queueSize);
    if (max === 0) throw new UpciError('NOT_OFFERED', `${this.bus.address}: virtqueue ${index} is not available`);
    // Split queues are a power of two in size (§2.7); a device may offer any size up to 32768.
    const size = 2 ** Math.floor(Math.log2(Math.min(max, depth)));
    // A pool of one: DMA memory with its bus address computed once (nvme's queues are made the same way).
    const memory = tag.createPool({ entrySize: SplitRing.bytes(size), entries: 1 });
    const doorbell = this.notify.offset + this.read2(COMMON.queueNotifyOff) * this.notifyMultiplier;
    if (doorbell + 2 > this.notify.offset + this.notify.length) throw new Error(`${this.bus.address}: virtqueue ${index}'s doorbell lies outside the notify area`);
    const space = this.notify.space;
    const ring = new SplitRing(size, memory.buffer, memory.offsetOf(0), memory.busAddresses[0]!, () => space.write2(doorbell, index));
    this.write2(COMMON.queueSize, size);
    this.write64(COMMON.queueDesc, ring.descBus);
    this.write64(COMMON.queueDriver, ring.availBus);
    this.write64(COMMON.queueDevice, ring.usedBus);
    this.write2(COMMON.queueMsixVector, vector);
    if (this.read2(COMMON.queueMsixVector) !== vector) throw new Error(`${this.bus.address}: the virtio device refused MSI-X vector ${vector} for virtqueue ${index}${vector === NO_VECTOR ? '' : ' (it has too few)'}`);
    this.write2(COMMON.queueEnable, 1);
    return ring;
  }

  /** The driver is ready: the device may use its queues from now. */
  driverOk(): void {
    this.setStatus(STATUS_DRIVER_OK);
  }

  /** Reads the device configuration consistently: again while the device changed it meanwhile (config generation, §4.1.4.3). */
  readConfig<T>(read: (space: BusSpace, base: number) => T): T {
    for (;;) {
      const before = this.read1(COMMON.configGeneration);
      const value = read(this.device.space, this.device.offset);
      if (this.read1(COMMON.configGeneration) === before) return value;
    }
  }
}
