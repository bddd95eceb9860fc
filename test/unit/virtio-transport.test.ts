/**
 * The virtio 1.x PCI transport (drivers/virtio/pci-transport.ts) against a
 * model of a modern virtio device: its vendor capabilities in config space
 * and its common configuration in BAR4 behaving as the spec says (feature
 * select windows, a reset that clears, FEATURES_OK the device may refuse,
 * MSI-X vectors it may refuse). The handshake's order, the features
 * VERSION_1 and ACCESS_PLATFORM required, the doorbell placed by
 * notify_off_multiplier, and capabilities a driver cannot use refused.
 */
import test from 'ava';
import type { DmaTag } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import { DriverConfigSpace } from '../../pci/driver-config.js';
import type { DriverBus } from '../../drivers/contract.js';
import { F_ACCESS_PLATFORM, F_VERSION_1, VirtioPci } from '../../drivers/virtio/pci-transport.js';

const BAR = 4;
const COMMON_AT = 0x0;
const ISR_AT = 0x1000;
const DEVICE_AT = 0x2000;
const NOTIFY_AT = 0x3000;
const MULTIPLIER = 4;

interface Model {
  offered: bigint;
  /** Whether the device keeps FEATURES_OK for this set. */
  accepts: (features: bigint) => boolean;
  msixVectors: number;
  /** Status bytes as written, in order. */
  statusWrites: number[];
  doorbells: [number, number][];
  queue: Record<string, number>;
}

/** BAR4 of the model: the common configuration's registers as a device keeps them; the notify area records writes. */
function modelBar(m: Model): BusSpace {
  let status = 0;
  let deviceSelect = 0;
  let driverSelect = 0;
  let driverFeatures = 0n;
  let configVector = 0xffff;
  const q = m.queue;
  const half = (v: bigint, select: number) => Number((v >> BigInt(32 * select)) & 0xffffffffn);
  const read = (at: number): number => {
    switch (at - COMMON_AT) {
      case 0x04: return half(m.offered, deviceSelect);
      case 0x10: return configVector;
      case 0x12: return 1; // num_queues
      case 0x14: return status;
      case 0x15: return 0; // config_generation
      case 0x18: return q.size ?? 64;
      case 0x1a: return q.vector ?? 0xffff;
      case 0x1e: return 3; // queue_notify_off
      default: return 0;
    }
  };
  const write = (at: number, v: number) => {
    if (at >= NOTIFY_AT) return void m.doorbells.push([at, v]);
    switch (at - COMMON_AT) {
      case 0x00: deviceSelect = v; break;
      case 0x08: driverSelect = v; break;
      case 0x0c: driverFeatures = (driverFeatures & ~(0xffffffffn << BigInt(32 * driverSelect))) | (BigInt(v >>> 0) << BigInt(32 * driverSelect)); break;
      case 0x10: configVector = v < m.msixVectors ? v : 0xffff; break;
      case 0x14:
        m.statusWrites.push(v);
        if (v === 0) driverFeatures = 0n;
        status = (v & 8) !== 0 && !m.accepts(driverFeatures) ? v & ~8 : v;
        break;
      case 0x18: q.size = v; break;
      case 0x1a: q.vector = v < m.msixVectors ? v : 0xffff; break;
      case 0x1c: q.enable = v; break;
      case 0x20: q.descLo = v; break;
      case 0x24: q.descHi = v; break;
      case 0x28: q.driverLo = v; break;
      case 0x30: q.deviceLo = v; break;
      default: break;
    }
  };
  return {
    read1: read, read2: read, read4: read, read8: (at: number) => BigInt(read(at)),
    write1: write, write2: write, write4: write,
  } as unknown as BusSpace;
}

/** Config space with vendor capabilities for `types` (cfg_type, bar, offset, length), the notify one with its multiplier. */
function modelConfig(caps: [number, number, number, number][]): Buffer {
  const config = Buffer.alloc(256);
  config.writeUInt16LE(0x10, 0x06); // capability list
  config[0x34] = 0x40;
  caps.forEach(([type, bar, offset, length], i) => {
    const at = 0x40 + i * 0x14;
    config.set([0x09, i + 1 < caps.length ? at + 0x14 : 0, 0x14, type, bar], at);
    config.writeUInt32LE(offset, at + 8);
    config.writeUInt32LE(length, at + 12);
    if (type === 2) config.writeUInt32LE(MULTIPLIER, at + 16);
  });
  return config;
}

const STANDARD: [number, number, number, number][] = [[1, BAR, COMMON_AT, 0x38], [3, BAR, ISR_AT, 4], [4, BAR, DEVICE_AT, 0x40], [2, BAR, NOTIFY_AT, 0x1000]];

function model(overrides: Partial<Model> = {}, caps = STANDARD) {
  const m: Model = { offered: F_VERSION_1 | F_ACCESS_PLATFORM | 0x240n, accepts: () => true, msixVectors: 2, statusWrites: [], doorbells: [], queue: {}, ...overrides };
  const config = modelConfig(caps);
  const space = modelBar(m);
  const bus = {
    address: '0000:00:0c.0',
    config: () => new DriverConfigSpace({ size: 256, read: (w, o) => (w === 1 ? config.readUInt8(o) : w === 2 ? config.readUInt16LE(o) : config.readUInt32LE(o)), write: () => {} }),
    bars: () => [{ index: BAR, type: 'mem64', prefetchable: true, base: 0n, size: 0x4000, mappable: true }],
    mapBar: (index: number) => {
      if (index !== BAR) throw new Error(`BAR${index} mapped`);
      return space;
    },
  } as unknown as DriverBus;
  return { m, bus };
}

/** A tag whose one pool is plain shared memory at bus address 0x1_0000_0000. */
const tag = {
  createPool: ({ entrySize }: { entrySize: number }) => ({ buffer: new SharedArrayBuffer(Math.ceil(entrySize / 4096) * 4096), offsetOf: () => 0, busAddresses: Float64Array.of(0x1_0000_0000) }),
} as unknown as DmaTag;

test('the handshake in the spec\'s order: reset, ACKNOWLEDGE, DRIVER, the features (wanted and offered, with VERSION_1 and ACCESS_PLATFORM), FEATURES_OK, a queue, DRIVER_OK', async (t) => {
  const { m, bus } = model();
  const transport = new VirtioPci(bus);
  const features = await transport.negotiate(0x200n | 0x4n);
  t.is(features, F_VERSION_1 | F_ACCESS_PLATFORM | 0x200n, 'only what the device offers of what was wanted');
  transport.configVector(0);
  const ring = transport.setupQueue(0, 256, tag, 1);
  t.is(ring.size, 64, 'the device\'s maximum when asked for more');
  t.deepEqual(m.queue, { size: 64, descLo: 0, descHi: 1, driverLo: 64 * 16, deviceLo: ring.usedBus - 2 ** 32, vector: 1, enable: 1 });
  transport.driverOk();
  t.deepEqual(m.statusWrites, [0, 1, 3, 11, 15]);
  ring.add(1, [0x5000], [16], 1);
  ring.kick();
  t.deepEqual(m.doorbells, [[NOTIFY_AT + 3 * MULTIPLIER, 0]], 'queue 0\'s index at notify_off × notify_off_multiplier');
});

for (const [missing, name, fix] of [[F_ACCESS_PLATFORM, 'VIRTIO_F_ACCESS_PLATFORM', /iommu_platform=on/], [F_VERSION_1, 'VIRTIO_F_VERSION_1', /disable-legacy=on/]] as const) {
  test(`a device without ${name} is refused (NOT_OFFERED, saying why and the fix) and told FAILED`, async (t) => {
    const { m, bus } = model({ offered: (F_VERSION_1 | F_ACCESS_PLATFORM) & ~missing });
    const transport = new VirtioPci(bus);
    const e = await t.throwsAsync(transport.negotiate(0n), { code: 'NOT_OFFERED', message: new RegExp(`does not offer ${name}`) } as never);
    t.regex(e!.message, fix);
    t.is(m.statusWrites.at(-1)! & 0x80, 0x80, 'FAILED set');
    t.is(m.statusWrites.at(-1)! & 0x08, 0, 'never FEATURES_OK');
  });
}

test('a device that clears FEATURES_OK refuses the set: NOT_OFFERED, FAILED', async (t) => {
  const { m, bus } = model({ accepts: () => false });
  await t.throwsAsync(new VirtioPci(bus).negotiate(0n), { code: 'NOT_OFFERED', message: /FEATURES_OK did not stay set/ } as never);
  t.is(m.statusWrites.at(-1)! & 0x80, 0x80);
});

test('an MSI-X vector the device refuses (it reads back NO_VECTOR) is an error, for config changes and for a queue', async (t) => {
  const { bus } = model({ msixVectors: 1 });
  const transport = new VirtioPci(bus);
  await transport.negotiate(0n);
  transport.configVector(0);
  t.throws(() => transport.setupQueue(0, 64, tag, 1), { message: /refused MSI-X vector 1 for virtqueue 0/ });
  const none = model({ msixVectors: 0 });
  const other = new VirtioPci(none.bus);
  await other.negotiate(0n);
  t.throws(() => other.configVector(0), { message: /refused MSI-X vector 0 for config changes/ });
});

test('capabilities a driver cannot use are refused: no common configuration, one placed outside its BAR', (t) => {
  t.throws(() => new VirtioPci(model({}, STANDARD.filter(([type]) => type !== 1)).bus), { code: 'UNSUPPORTED', message: /no virtio common configuration capability/ } as never);
  t.throws(() => new VirtioPci(model({}, [[1, BAR, 0x3ff0, 0x38], ...STANDARD.slice(1)]).bus), { code: 'UNSUPPORTED', message: /outside any memory BAR/ } as never);
  t.throws(() => new VirtioPci(model({}, [[1, 2, 0, 0x38], ...STANDARD.slice(1)]).bus), { code: 'UNSUPPORTED', message: /BAR2/ } as never);
});
