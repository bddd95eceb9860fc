/**
 * One incarnation of the virtio-net driver as a packet port
 * (drivers/packet.ts): one receive and one transmit queue, the station
 * address and the link state from the device configuration, MSI-X with
 * config changes, receive and transmit on three vectors. Received frames
 * go out by reference; transmit buffers are the consumer's to fill.
 */
import type { DriverBus, DriverInterrupts } from '../contract.js';
import { NicPort } from '../kit/nic-port.js';
import { VectorService } from '../kit/vectors.js';
import type { LinkState, Mac, PortInfo } from '../packet.js';
import type { VirtioPci } from '../virtio/pci-transport.js';
import type { RxQueue } from './rx-queue.js';
import type { TxQueue } from './tx-queue.js';

/** MSI-X vectors: config changes on their own, then one per queue. */
export const CONFIG_VECTOR = 0;
export const RX_VECTOR = 1;
export const TX_VECTOR = 2;

/** struct virtio_net_config: mac[6], then status (VIRTIO_NET_S_LINK_UP), when their features are negotiated. */
const CONFIG_MAC = 0;
const CONFIG_STATUS = 6;
const S_LINK_UP = 1;

export class VirtioNet extends NicPort<TxQueue> {
  /** The vectors' handlers (serve() starts them): a throw, or a vector's error, becomes a driver crash. */
  private vectors: VectorService<VirtioNet> | undefined;
  readonly hardwareCounters: readonly string[] = [];

  constructor(
    bus: DriverBus,
    private readonly transport: VirtioPci,
    private readonly rx: RxQueue,
    tx: TxQueue,
    private readonly interrupts: DriverInterrupts,
    readonly info: PortInfo,
    /** Whether the device reports its link (VIRTIO_NET_F_STATUS); without it the link is always up (§5.1.4). */
    private readonly hasStatus: boolean,
    /** Fault injection: the receive handler throws once this many frames came (first incarnation only). */
    private readonly failAfterRxFrames: number | undefined,
  ) {
    super(bus, tx, rx.buffers);
  }

  /** The station address the device configuration holds (VIRTIO_NET_F_MAC). */
  static readMac(transport: VirtioPci): Mac {
    return transport.readConfig((space, base) => Array.from({ length: 6 }, (_, i) => space.read1(base + CONFIG_MAC + i))) as unknown as Mac;
  }

  private readLink(): LinkState {
    const up = !this.hasStatus || (this.transport.readConfig((space, base) => space.read2(base + CONFIG_STATUS)) & S_LINK_UP) !== 0;
    // virtio reports no speed without VIRTIO_NET_F_SPEED_DUPLEX, and has no PHY or autonegotiation.
    return { up, speedMbps: undefined, fullDuplex: true, phyLink: up, autonegComplete: false };
  }

  /**
   * Provides the port, fills the receive queue and reports the link, all in
   * one turn of the event loop after the device is live, so no request of
   * the consumer's comes before the queues are ready.
   */
  start(): void {
    const endpoint = this.provide(this.failAfterRxFrames);
    this.rx.start(endpoint.counters.rx, this.deliver);
    this.tx.start(endpoint.counters.tx, (buffer) => endpoint.transmitted(buffer));
    const link = this.readLink();
    endpoint.setLink(link);
    this.bus.note(`up: ${this.info.mac}, link ${link.up ? 'up' : 'down'}, queues ${this.info.rxRing}/${this.info.txRing}, ${this.receiveBuffers} receive buffers`);
  }

  /** Handles the vectors (what came before is delivered now) until stop(); a handler's throw goes to `fault`. */
  serve(fault: (e: unknown) => void): void {
    // Each event is acknowledged once its handler returned or threw.
    this.vectors = new VectorService<VirtioNet>(this, fault, true);
    this.vectors.serve(this.interrupts.vectors, [this.onConfig, this.onRx, this.onTx]);
  }

  /** Resets the device and waits until it reads back 0 (a clean detach). */
  reset(): Promise<void> {
    return this.transport.reset();
  }

  private onRx(): void {
    this.counters.vectors.rx++;
    this.rx.receive();
  }

  private onTx(): void {
    this.counters.vectors.tx++;
    this.tx.reclaim();
  }

  private onConfig(): void {
    this.counters.vectors.other++;
    if (this.transport.needsReset) throw new Error('the virtio-net device set DEVICE_NEEDS_RESET');
    this.endpoint!.setLink(this.readLink());
  }

  applyFilters(): void {
    // No control queue is negotiated (VIRTIO_NET_F_CTRL_RX): the device takes every frame, as QEMU's does after reset.
  }

  readStats(): void {
    // virtio-net has no statistics registers: the driver's own counters are all there is.
  }

  /**
   * Stop, at a crash as at a clean stop, synchronously, before the host
   * quiesces the device: the device is reset (it stops using the queues),
   * what the queues still held is counted as lost, and the port unbound.
   */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.vectors?.stop();
    this.transport.resetNow();
    if (this.endpoint === undefined) return;
    this.counters.rx.lostInRestart += this.rx.close();
    this.counters.tx.lostInRestart += this.tx.close();
    this.endpoint.unbind();
  }
}
