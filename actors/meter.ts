import type { BusDma } from '../pci/bus-dma.js';
import type { InterruptType } from '../pci/intr.js';
import type { BusMeter } from '../workers/driver-bus.js';
import type { DriverLedger } from '../workers/driver-ledger.js';

/** The driver thread of an incarnation as the status view shows it. */
export interface ThreadStats {
  readonly threadId: number;
  /** Since the worker's last heartbeat; undefined before its first. */
  readonly heartbeatAgeMs: number | undefined;
  readonly heapUsed: number;
  readonly heapLimit: number;
}

/** What DriverThread lets the meter read. */
export interface ThreadView {
  readonly ledger: DriverLedger;
  stats(): ThreadStats;
}

/**
 * A device's counters as the host samples them, kept across the driver's
 * restarts (each attach gets a fresh DriverBus, the meter stays). A driver
 * in this thread counts here directly; one in a worker counts in its ledger,
 * which the meter follows while that incarnation lives.
 */
export class DeviceMeter implements BusMeter {
  private counted = 0;
  private thread: ThreadView | undefined;
  private seen = 0;
  /** The current in-thread incarnation's bus_dma, when the driver has asked for it. */
  dma: BusDma | undefined;
  irqKind: InterruptType | undefined;

  countInterrupts(n: number): void {
    this.counted += n;
  }

  /** Interrupts delivered to the driver, every incarnation together (coalesced ones counted). */
  get interrupts(): number {
    if (this.thread !== undefined) {
      const now = this.thread.ledger.interrupts;
      this.counted += (now - this.seen) >>> 0;
      this.seen = now;
    }
    return this.counted;
  }

  /** Follows a worker incarnation's ledger (undefined: stops, keeping what it counted). */
  follow(thread: ThreadView | undefined): void {
    void this.interrupts;
    this.thread = thread;
    this.seen = thread?.ledger.interrupts ?? 0;
  }

  /** Bytes the device can reach through the IOMMU right now. */
  dmaBytesMapped(): number {
    return this.thread !== undefined ? this.thread.ledger.dmaBytes : this.dma?.bytesMapped ?? 0;
  }

  /** The shared memory of the driver's worker thread, when it has one. */
  threadLedger(): SharedArrayBuffer | undefined {
    return this.thread?.ledger.buffer;
  }

  /** The driver's worker thread, when it has one. */
  threadStats(): ThreadStats | undefined {
    return this.thread?.stats();
  }
}
