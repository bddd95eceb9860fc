/**
 * What a NIC driver's packet port (PacketBinding, drivers/packet.ts) is
 * besides its device: the endpoint it is provided as, received frames
 * handed to it through one bound function (with the failAfterRxFrames
 * fault injection), and transmit through the driver's transmit ring or
 * queue, nothing once stopped. e1000e and virtio-net are built on it.
 */
import type { DriverBus } from '../contract.js';
import type { DriverCounters, Mac, PacketBinding, PacketEndpoint, PortInfo, RxFrame, TransmitBuffers } from '../packet.js';

/** A NIC's transmit side as its port uses it (e1000e's TxRing, virtio-net's TxQueue, both on kit/tx-buffers.ts). */
export interface PortTransmit {
  readonly transmitBuffers: TransmitBuffers;
  post(index: number, length: number): void;
  flush(): void;
  /** Gives the buffers the device is done with back to the consumer; how many. */
  reclaim(): number;
}

export abstract class NicPort<Tx extends PortTransmit> implements PacketBinding {
  protected stopped = false;
  /** Set by provide() (nothing is received, sent or interrupted before). */
  protected endpoint: PacketEndpoint | undefined;
  protected counters!: DriverCounters;
  /** Hands a frame to the port; bound once at provide(), so the receive path allocates nothing per packet. */
  protected deliver!: (frame: RxFrame) => void;
  abstract readonly info: PortInfo;
  abstract readonly hardwareCounters: readonly string[];

  constructor(protected readonly bus: DriverBus, protected readonly tx: Tx, readonly receiveBuffers: number) {}

  get transmitBuffers(): TransmitBuffers {
    return this.tx.transmitBuffers;
  }

  /**
   * Provides the port. With fault injection (the driver's
   * failAfterRxFrames, on its first incarnation only: restarts run clean)
   * delivery throws once more than that many frames were received.
   */
  protected provide(failAfterRxFrames: number | undefined): PacketEndpoint {
    const endpoint = this.bus.providePacketPort(this);
    this.endpoint = endpoint;
    this.counters = endpoint.counters;
    const failAt = this.bus.incarnation === 0 ? failAfterRxFrames : undefined;
    this.deliver = (frame) => {
      if (failAt !== undefined && endpoint.counters.rx.frames > failAt) {
        frame.release();
        throw new Error(`fault injection: failAfterRxFrames=${failAt} reached`);
      }
      endpoint.deliver(frame);
    };
    return endpoint;
  }

  transmit(index: number, length: number): void {
    if (!this.stopped) this.tx.post(index, length);
  }

  flushTransmit(): void {
    if (this.stopped) return;
    this.tx.flush();
    // The buffers the device is done with go back to the consumer now, not at the next transmit
    // interrupt (QEMU transmits at the doorbell; real hardware has done earlier batches by then).
    this.tx.reclaim();
  }

  abstract applyFilters(unicast: readonly Mac[], multicast: readonly Mac[]): void;
  abstract readStats(into: Record<string, number>): void;
}
