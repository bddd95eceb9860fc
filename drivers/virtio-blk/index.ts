/**
 * virtio-blk driver (virtio 1.x modern, device type 2): the disk as a
 * block device named `<name>n1`. attach negotiates the features over the
 * virtio PCI transport (VERSION_1 and ACCESS_PLATFORM required), sets up
 * the request queue with its MSI-X vector and config changes on vector 0,
 * and publishes the disk; the machine reaps completions on interrupts and
 * turns a throw while reaping, or a device asking for a reset, into a
 * driver crash the host supervises. The device is reset before the host
 * takes it back, whether the driver stopped or failed.
 */
import { fromCallback } from 'xstate';
import { defineDriver, type DriverBus, type DriverInterrupts, type OptionsOf } from '../contract.js';
import { serveInterrupts } from '../kit/vectors.js';
import { servingMachine, type DriverFault } from '../serving-machine.js';
import { VIRTIO_VENDOR, VirtioPci, modernDeviceId } from '../virtio/pci-transport.js';
import { VirtioDisk } from './disk.js';

const BLK_TYPE = 2;
const F_SIZE_MAX = 1n << 1n;
const F_BLK_SIZE = 1n << 6n;
const F_FLUSH = 1n << 9n;
/** struct virtio_blk_config: capacity (512-byte sectors), size_max, blk_size. */
const CONFIG_CAPACITY = 0;
const CONFIG_SIZE_MAX = 8;
const CONFIG_BLK_SIZE = 20;
const CONFIG_VECTOR = 0;
const QUEUE_VECTOR = 1;

const options = {
  queueDepth: { type: 'integer', min: 4, max: 32768, default: 256, doc: 'descriptors in the request queue (the device may offer fewer; rounded down to a power of two); each request takes 3' },
  maxTransferKiB: { type: 'integer', min: 4, max: 4096, default: 128, doc: 'largest transfer of one request (also capped by the device\'s size_max); larger requests are split' },
  failAfterCompletions: { type: 'integer', min: 1, doc: 'test/fault injection: the first incarnation\'s completion handler throws at the Nth completion' },
} as const;

export type VirtioBlkOptions = OptionsOf<typeof options>;

export interface VirtioBlkResources {
  readonly transport: VirtioPci;
  readonly disk: VirtioDisk;
  readonly interrupts: DriverInterrupts;
}

async function attach(bus: DriverBus, opts: VirtioBlkOptions): Promise<VirtioBlkResources> {
  const transport = new VirtioPci(bus);
  // Whatever happens next, the device stops before the host takes it back: a reset drops its queues and its DMA.
  let disk: VirtioDisk | undefined;
  bus.onRelease(() => {
    transport.resetNow();
    disk?.abandon('the driver was detached or failed; the host reclaimed the device');
  });
  const features = await transport.negotiate(F_SIZE_MAX | F_BLK_SIZE | F_FLUSH);
  if (transport.device.length < CONFIG_BLK_SIZE + 4) {
    transport.fail();
    throw new Error(`${bus.address}: the virtio-blk device configuration is ${transport.device.length} bytes, short of blk_size's end at ${CONFIG_BLK_SIZE + 4}`);
  }
  const geometry = transport.readConfig((space, base) => ({
    sectors: Number(space.read8(base + CONFIG_CAPACITY)),
    sizeMax: features & F_SIZE_MAX ? space.read4(base + CONFIG_SIZE_MAX) >>> 0 : Infinity,
    blockSize: features & F_BLK_SIZE ? space.read4(base + CONFIG_BLK_SIZE) >>> 0 : 512,
  }));
  if (!(geometry.blockSize >= 512 && geometry.blockSize <= 65536 && (geometry.blockSize & (geometry.blockSize - 1)) === 0)) {
    transport.fail();
    throw new Error(`${bus.address}: the virtio-blk device reports a block size of ${geometry.blockSize} bytes`);
  }
  const maxTransferBytes = Math.floor(Math.min(opts.maxTransferKiB * 1024, geometry.sizeMax) / geometry.blockSize) * geometry.blockSize;
  if (maxTransferBytes === 0) {
    transport.fail();
    throw new Error(`${bus.address}: the virtio-blk device's size_max ${geometry.sizeMax} is below one block of ${geometry.blockSize}`);
  }
  const interrupts = bus.establishInterrupts({ type: 'msix', vectors: 2 });
  const dma = bus.dma();
  const tag = dma.createTag({ alignment: 16, addressLimit: 2n ** 53n - 1n });
  try {
    transport.configVector(CONFIG_VECTOR);
    const ring = transport.setupQueue(0, opts.queueDepth, tag, QUEUE_VECTOR);
    disk = new VirtioDisk({
      name: `${bus.name}n1`,
      blockSize: geometry.blockSize,
      blockCount: Math.floor(geometry.sectors * 512 / geometry.blockSize),
      canDiscard: false,
      maxTransferBytes,
    }, ring, tag, (features & F_FLUSH) !== 0n);
    dma.enableBusMaster();
    transport.driverOk();
  } catch (e) {
    transport.fail();
    throw e;
  }
  if (bus.incarnation === 0) disk.failAt = opts.failAfterCompletions;
  bus.provideBlockDevice(disk);
  bus.note(`${disk.name}: ${disk.blockCount} × ${disk.blockSize} B, queue of ${disk.queueDepth}, ${maxTransferBytes / 1024} KiB per request, features 0x${features.toString(16)}`);
  return { transport, disk, interrupts };
}

/** Clean detach: fail what is outstanding, then reset and wait for the device to finish it. */
async function detach(_bus: DriverBus, r: VirtioBlkResources): Promise<void> {
  r.disk.abandon('the driver is detaching');
  await r.transport.reset();
}

/** Reaps on the queue's vector; a config change is checked for a device asking to be reset. A throw becomes a fault event. */
const service = fromCallback<DriverFault, VirtioBlkResources>(({ input: r, sendBack }) => {
  const fault = (error: unknown) => sendBack({ type: 'fault', error });
  return serveInterrupts(r.interrupts.vectors, (vector) => {
    if (vector === QUEUE_VECTOR) r.disk.reap();
    else if (r.transport.needsReset) throw new Error('the virtio-blk device set DEVICE_NEEDS_RESET');
  }, fault);
});

const machine = servingMachine<VirtioBlkOptions, VirtioBlkResources>('virtio-blk', service);

export const virtioBlkDriver = defineDriver({
  name: 'virtio-blk',
  description: 'virtio 1.x block device (modern PCI, behind the IOMMU): the disk as a block device',
  match: [{ vendor: VIRTIO_VENDOR, device: modernDeviceId(BLK_TYPE) }],
  options,
  attach,
  detach,
  machine,
});
