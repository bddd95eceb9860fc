/**
 * virtio-net driver (virtio 1.x modern, device type 1): the NIC as a packet
 * port (DriverHost.packetPort; the TAP export serves it to the kernel).
 * attach negotiates MAC and STATUS over the virtio PCI transport (VERSION_1
 * and ACCESS_PLATFORM required; no offloads, no merged receive buffers, no
 * control queue), sets up receive queue 0 and transmit queue 1 with a
 * vector each and config changes on a third, and starts the port. A throw
 * in a handler, or the device asking for a reset, is a driver crash the
 * host supervises. The device is reset before the host takes it back,
 * whether the driver stopped or failed.
 */
import { fromCallback } from 'xstate';
import { UpciError } from '../../kernel/errors.js';
import { defineDriver, type DriverBus, type OptionsOf } from '../contract.js';
import { formatMac } from '../packet.js';
import { servingMachine, type DriverFault } from '../serving-machine.js';
import { VIRTIO_VENDOR, VirtioPci, modernDeviceId } from '../virtio/pci-transport.js';
import { CONFIG_VECTOR, RX_VECTOR, TX_VECTOR, VirtioNet } from './nic.js';
import { RxQueue } from './rx-queue.js';
import { TxQueue } from './tx-queue.js';

const NET_TYPE = 1;
const F_MAC = 1n << 5n;
const F_STATUS = 1n << 16n;
/** The device configuration up to status's end (struct virtio_net_config). */
const CONFIG_BYTES = 8;
const RX_QUEUE = 0;
const TX_QUEUE = 1;

const options = {
  rxRing: { type: 'integer', min: 16, max: 32768, default: 1024, doc: 'receive queue descriptors, one per buffer (the device may offer fewer; rounded down to a power of two)' },
  txRing: { type: 'integer', min: 16, max: 32768, default: 512, doc: 'transmit queue descriptors (the device may offer fewer; rounded down to a power of two); each frame takes two' },
  rxBuffers: { type: 'integer', min: 16, max: 65_536, default: 2048, doc: 'receive buffers of 1526 bytes, at least rxRing: the surplus is what consumers may hold unreleased while the queue stays full' },
  failAfterRxFrames: { type: 'integer', min: 1, doc: 'test/fault injection: the receive handler throws after N frames of the first incarnation (restarts run clean)' },
} as const;

export type VirtioNetOptions = OptionsOf<typeof options>;

async function attach(bus: DriverBus, opts: VirtioNetOptions): Promise<VirtioNet> {
  if (opts.rxBuffers < opts.rxRing) {
    throw new UpciError('BAD_CONFIG', `virtio-net: rxBuffers ${opts.rxBuffers} is less than rxRing ${opts.rxRing}: the receive queue could never be filled`, 'give rxBuffers at least rxRing');
  }
  const transport = new VirtioPci(bus);
  // Whatever happens next, the device stops before the host takes it back: a reset drops its queues and its DMA.
  bus.onRelease(() => transport.resetNow());
  const features = await transport.negotiate(F_MAC | F_STATUS);
  if ((features & F_MAC) === 0n || transport.device.length < CONFIG_BYTES) {
    transport.fail();
    throw new UpciError('NOT_OFFERED', `${bus.address}: the virtio-net device offers no station address (VIRTIO_NET_F_MAC, ${transport.device.length} bytes of configuration)`, 'give the device a MAC (QEMU does by default)');
  }
  const interrupts = bus.establishInterrupts({ type: 'msix', vectors: 3 });
  const dma = bus.dma();
  const tag = dma.createTag({ alignment: 16, addressLimit: 2n ** 53n - 1n });
  try {
    transport.configVector(CONFIG_VECTOR);
    const rxRing = transport.setupQueue(RX_QUEUE, opts.rxRing, tag, RX_VECTOR);
    const txRing = transport.setupQueue(TX_QUEUE, opts.txRing, tag, TX_VECTOR);
    const mac = formatMac(VirtioNet.readMac(transport));
    const info = { mac, macSource: 'device configuration', phyId: 'virtio', interrupt: 'msix', incarnation: bus.incarnation, rxRing: rxRing.size, txRing: txRing.size };
    const nic = new VirtioNet(bus, transport, new RxQueue(rxRing, tag, opts.rxBuffers), new TxQueue(txRing, tag), interrupts, info,
      (features & F_STATUS) !== 0n, opts.failAfterRxFrames);
    dma.enableBusMaster();
    transport.driverOk();
    nic.start();
    return nic;
  } catch (e) {
    transport.fail();
    throw e;
  }
}

/** Clean detach: the device reset, and waited for until it reads back 0. */
async function detach(_bus: DriverBus, nic: VirtioNet): Promise<void> {
  nic.stop();
  await nic.reset();
}

/** Serves the port until the host takes the device back; a handler's throw becomes a fault event. */
const service = fromCallback<DriverFault, VirtioNet>(({ input: nic, sendBack }) => {
  nic.serve((error) => {
    nic.stop();
    sendBack({ type: 'fault', error });
  });
  return () => nic.stop();
});

const machine = servingMachine<VirtioNetOptions, VirtioNet>('virtio-net', service);

export const virtioNetDriver = defineDriver({
  name: 'virtio-net',
  description: 'virtio 1.x network device (modern PCI, behind the IOMMU): a packet port (DriverHost.packetPort)',
  match: [{ vendor: VIRTIO_VENDOR, device: modernDeviceId(NET_TYPE) }],
  options,
  attach,
  detach,
  machine,
});
