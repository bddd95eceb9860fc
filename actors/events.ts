import type { PciAddress } from '../kernel/pci-address.js';
import type { DeviceStateName, Fault, Outcome, Release, ResetKind } from './device-machine.js';
import type { QuiesceReport } from './driver-thread.js';
import type { ThreadStats } from './meter.js';

/** What the host reports, as one RxJS stream; `at` is Date.now(). */
export type HostEvent =
  | { readonly type: 'state'; readonly at: number; readonly address: PciAddress; readonly driver: string; readonly state: DeviceStateName; readonly incarnation: number }
  | { readonly type: 'fault'; readonly at: number; readonly address: PciAddress; readonly fault: Fault }
  | { readonly type: 'restart'; readonly at: number; readonly address: PciAddress; readonly attempt: number; readonly delayMs: number; readonly reset: ResetKind }
  | { readonly type: 'released'; readonly at: number; readonly address: PciAddress; readonly outcome: Outcome; readonly release: Release }
  | {
    readonly type: 'stats'; readonly at: number; readonly address: PciAddress;
    /** Delivered since start, all incarnations. */
    readonly interrupts: number;
    readonly interruptsPerSecond: number;
    readonly dmaBytesMapped: number;
    /** The driver's worker thread: its id, how long since its heartbeat last moved, its heap. */
    readonly thread?: ThreadStats;
  }
  /** A driver incarnation started in its own worker thread; `dmaWindow`: the only bus addresses it may map DMA at (hex `start-end`, inclusive). */
  | { readonly type: 'thread'; readonly at: number; readonly address: PciAddress; readonly incarnation: number; readonly threadId: number; readonly dmaWindow: readonly string[] }
  /** The main thread took the device back from a driver thread: what it read back (bus mastering, vectors, DMA mappings). */
  | { readonly type: 'quiesced'; readonly at: number; readonly address: PciAddress; readonly incarnation: number; readonly report: QuiesceReport }
  /**
   * The kernel asked for the device back (VFIO device request: an unbind of vfio-pci, a hot-unplug) and the host
   * gave it: driver taken back, bus mastering off, vectors off, DMA unmapped, device closed. It is not restarted;
   * a 'released' event (outcome 'removed') follows. `requests`: the kernel's asks seen before the close.
   */
  | { readonly type: 'removed'; readonly at: number; readonly address: PciAddress; readonly incarnation: number; readonly requests: number; readonly error?: string }
  /**
   * An export of the config (actors/exports.ts) of the service `service`
   * (e.g. "nvme0n1") that the device at `address` provides, at `target`
   * (a socket path, an interface): opened once its provider attached,
   * following the provider's next incarnation, closed at shutdown, or not
   * opened (`detail` says why).
   */
  | {
    readonly type: 'export'; readonly at: number; readonly address: PciAddress; readonly kind: string; readonly service: string; readonly target: string;
    readonly phase: 'open' | 'followed' | 'closed' | 'failed'; readonly detail: string;
  }
  | { readonly type: 'note'; readonly at: number; readonly address: PciAddress; readonly message: string }
  /** The host as a whole; 'reloaded': a new config took effect (detail: what was claimed, released, restarted); 'reload-refused': it did not, nothing changed (detail: why). */
  | { readonly type: 'host'; readonly at: number; readonly phase: 'running' | 'stopping' | 'stopped' | 'forced' | 'reloaded' | 'reload-refused'; readonly detail?: string };
