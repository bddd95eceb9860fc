import type { BusDma } from '../pci/bus-dma.js';

/**
 * A device's counters as the host samples them, kept across the driver's
 * restarts (each attach gets a fresh DriverBus, the meter stays).
 */
export class DeviceMeter {
  /** Interrupts delivered to the driver, every incarnation together (coalesced ones counted). */
  interrupts = 0;
  /** The current incarnation's bus_dma, when the driver has asked for it. */
  dma: BusDma | undefined;

  /** Bytes the device can reach through the IOMMU right now. */
  dmaBytesMapped(): number {
    return this.dma?.bytesMapped ?? 0;
  }
}
