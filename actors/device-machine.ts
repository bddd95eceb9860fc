/**
 * The device actor: one per claimed PCI function, supervising its driver.
 *
 *   claimed ─START→ attaching ──→ running ──(driver done / STOP)──→ detaching ──→ released
 *                      │             │ (driver threw, rejected, watchdog)
 *                      └─────────────┴──→ failed ──→ resetting ──(back-off)──→ attaching
 *                                          │ (no restarts left)
 *                                          └──────→ detaching
 *
 *   any state but detaching ─REQUEST→ removing ──→ released (outcome removed)
 *   running ─PCIE_ERROR→ failed (claimed, attaching, reloading: when the next attach settles)
 *
 * failed quiesces the device (bus master off, interrupts disabled, DMA
 * unmapped, BARs revoked); resetting resets it through the kernel port, or,
 * when the port cannot reset the function (edu under VFIO), closes and
 * reopens it, then waits out the back-off. detaching quiesces and closes.
 * REQUEST is the kernel asking for the device back (VFIO's device request:
 * an unbind of vfio-pci, a hot-unplug): removing takes it back from the
 * driver as failed does (consumers failed, thread killed, bus mastering off,
 * vectors off, DMA unmapped), closes it without a reset (the kernel's
 * unbind waits for that close), and ends the actor: no restart. A request
 * that comes while an attach, a reload, a quiesce or a reset is in flight
 * is remembered and acted on when it settles.
 * PCIE_ERROR is the kernel reporting an uncorrectable PCIe error of the
 * function (VFIO's ERR eventfd, AER): a driver fault like a crash, so the
 * device is quiesced in the same order, reset, and the driver restarted
 * under the restart policy. One before or during an attach (claimed,
 * attaching, reloading) is the next attach's fault once it settles; in the
 * other states the device is already on its way to a reset or a release,
 * so it is only noted.
 * Every state is entered as its own macrostep, so each transition shows in
 * the actor's snapshots and in the inspection stream.
 */
import { assign, fromPromise, setup, type ActorRefFrom, type InspectionEvent, type Observer } from 'xstate';
import type { AnyDriver, OptionsOf, OptionsSchema } from '../drivers/contract.js';
import { UpciError } from '../kernel/errors.js';
import type { PciAddress } from '../kernel/pci-address.js';
import type { PciDevice } from '../pci/device.js';
import { restartDelay } from './backoff.js';
import type { Supervision } from './config.js';
import { stopBusMaster } from '../workers/driver-bus.js';
import type { ServiceRegistry } from '../services/service-registry.js';
import type { QuiesceReport, Silence } from './driver-thread.js';
import { attachIncarnation, type Incarnation } from './incarnation.js';
import type { DeviceMeter } from './meter.js';

export type DeviceStateName = 'claimed' | 'attaching' | 'running' | 'reloading' | 'failed' | 'resetting' | 'detaching' | 'removing' | 'released';

/** Why a driver incarnation ended badly. */
export interface Fault {
  /** pcie-error: the kernel reported an uncorrectable PCIe error of the function (AER). */
  readonly kind: 'attach' | 'crash' | 'watchdog' | 'pcie-error';
  readonly message: string;
  readonly incarnation: number;
  /** A watchdog's hang: how long the thread had been silent, and for how much of it this process ran. */
  readonly silence?: Silence;
  /**
   * When the host saw it (Date.now()). The fault event carries this time:
   * the host reports a fault after the first, synchronous steps of taking
   * the device back (bus mastering off, vectors off, DMA unmapped), which
   * took 200 ms and more in the loaded TCG guest.
   */
  readonly at: number;
}

/**
 * A NOT_OFFERED refusal, naming the option that asked for it where one did: an enum option whose value the
 * refusal names (`interrupt: "msi"` for "offers 0 msi vector(s)").
 */
function notOffered({ driver, options, configPath }: DeviceContext, refusal: string): string {
  const asking = Object.entries(driver.options ?? {}).find(([key, spec]) => {
    const value = (options as Record<string, unknown>)[key];
    return spec.type === 'enum' && typeof value === 'string' && new RegExp(`\\b${value}\\b`).test(refusal);
  });
  const where = asking === undefined ? `${configPath}: the driver asked for what the device does not offer` : `${configPath}.options.${asking[0]} (${JSON.stringify((options as Record<string, unknown>)[asking[0]])}) is not what this device offers`;
  return `${where}: ${refusal}; not restarted (no restart changes what the device offers)`;
}

const faultOf = (kind: Fault['kind'], message: string, incarnation: number, silence?: Silence): Fault =>
  ({ kind, message, incarnation, ...(silence === undefined ? {} : { silence }), at: Date.now() });

/** How the device was reset before a restart: FLR-style through the kernel, or close and reopen when the kernel has no reset for it. */
export type ResetKind = 'kernel-reset' | 'reopen';

/** How a device actor ended. */
export type Outcome =
  | { readonly kind: 'stopped' }
  | { readonly kind: 'finished' }
  | { readonly kind: 'gave-up'; readonly fault: Fault }
  /** The reopen after a fault failed: the device is closed and not coming back. */
  | { readonly kind: 'lost'; readonly error: string }
  /** The host closed the device directly, not waiting for the actor (a second signal, an overrun shutdown). */
  | { readonly kind: 'forced' }
  /** The kernel asked for the device back (device request: unbind, hot-unplug); it was quiesced and closed, not restarted. */
  | { readonly kind: 'removed' };

export interface DeviceActorInput {
  readonly address: PciAddress;
  readonly device: PciDevice;
  readonly driver: AnyDriver;
  readonly options: OptionsOf<OptionsSchema>;
  readonly supervision: Supervision;
  readonly meter: DeviceMeter;
  /** Opens the address again (the reset of a device the kernel cannot reset). */
  readonly reopen: (address: PciAddress) => PciDevice;
  readonly onNote: (message: string) => void;
  /** A driver thread was taken back from: what was read back, while the thread still ran or after it died. */
  readonly onQuiesced: (incarnation: number, report: QuiesceReport) => void;
  /** A driver incarnation started in its own thread. */
  readonly onThread: (incarnation: number, threadId: number, dmaWindow: readonly string[]) => void;
  /** Inspection of a driver machine run in this thread (one in a worker is not inspectable from here). */
  readonly inspect?: Observer<InspectionEvent> | ((event: InspectionEvent) => void);
  /** The config entry's name: the driver's block devices are named after it. */
  readonly name: string;
  /** Where the entry is in the config (`devices[1]`), for errors that name an option. */
  readonly configPath: string;
  /** The host's services (services/service-registry.ts): a driver thread gets a link of its own, a driver here the main thread's. */
  readonly services: ServiceRegistry;
}

export interface DeviceContext extends DeviceActorInput {
  /** The device as now open; after a reopen, the new handle. */
  readonly device: PciDevice;
  /** The driver incarnation attached now (in its thread or here: actors/incarnation.ts). */
  readonly attachment: Incarnation | undefined;
  readonly incarnation: number;
  /** Restarts so far; the back-off and the give-up rule count them. */
  readonly restarts: number;
  readonly fault: Fault | undefined;
  readonly lastReset: ResetKind | undefined;
  /** STOP arrived while an attach or reset was in flight: finish it, then detach. */
  readonly stopRequested: boolean;
  /** The kernel asked for the device back while something was in flight: finish it, then remove. */
  readonly removeRequested: boolean;
  /** An uncorrectable PCIe error reported before or during an attach: the attach's fault, once it settles. */
  readonly pcieError: string | undefined;
  /** The last fault is one no restart can change (NOT_OFFERED): the device is released, not restarted. */
  readonly permanent: boolean;
  readonly outcome: Outcome;
  readonly released: Release | undefined;
}

export type DeviceEvent =
  | { type: 'START' }
  | { type: 'STOP' }
  | { type: 'WATCHDOG'; message: string; silence?: Silence }
  /** The driver's code changed (`upci run --watch`): restart it with the new code, keeping the device. */
  | { type: 'RELOAD' }
  /** The kernel asks for the device back (VFIO device request: an unbind, a hot-unplug): quiesce, close, no restart. */
  | { type: 'REQUEST' }
  /** The kernel reported an uncorrectable PCIe error of the function (VFIO's ERR eventfd): a driver fault, `message` its cause. */
  | { type: 'PCIE_ERROR'; message: string };

/** What the final release did: a kernel reset before closing, or just the close (no reset method). */
export type ReleaseKind = 'kernel-reset' | 'close' | 'already-closed';

export interface Release {
  readonly how: ReleaseKind;
  /** A step that failed (the device is closed regardless). */
  readonly error: string | undefined;
}

export interface DeviceOutput {
  readonly address: PciAddress;
  readonly outcome: Outcome;
  readonly restarts: number;
  readonly released: Release;
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));


interface Quiescing {
  readonly device: PciDevice;
  readonly attachment: Incarnation | undefined;
}

/** Takes the device back from whatever is attached (actors/incarnation.ts), and at least turns bus mastering off. */
async function quiesce({ device, attachment }: Quiescing, graceful: boolean, removed = false): Promise<void> {
  if (attachment === undefined) stopBusMaster(device);
  else await attachment.quiesce(graceful, removed);
}


/** One claimed device's actor; its driver comes with its input. */
export const deviceMachine = setup({
  types: {
    input: {} as DeviceActorInput,
    context: {} as DeviceContext,
    events: {} as DeviceEvent,
    output: {} as DeviceOutput,
  },
  actors: {
    attach: fromPromise<Incarnation, { context: DeviceContext; onWatchdog: (message: string, silence?: Silence) => void }>(
      ({ input: { context, onWatchdog } }) => attachIncarnation({ ...context, onWatchdog }),
    ),
    driver: fromPromise<void, Incarnation>(({ input, signal }) => input.run(signal)),
    quiesce: fromPromise<void, Quiescing>(async ({ input }) => quiesce(input, false)),
    // The kernel wants the device back: taken from its driver at once (no clean detach: on a hot-unplug
    // the device is already gone), then closed, which is what the kernel's unbind waits for.
    remove: fromPromise<void, Quiescing>(async ({ input }) => {
      if (!input.device.isOpen) return;
      try {
        await quiesce(input, false, true);
      } finally {
        input.device.close();
      }
    }),
    reload: fromPromise<void, Quiescing>(async ({ input }) => {
      await quiesce(input, true);
      if (input.device.kernel.canReset) input.device.reset();
    }),
    reset: fromPromise<{ device: PciDevice; kind: ResetKind }, { device: PciDevice; reopen: (a: PciAddress) => PciDevice }>(async ({ input: { device, reopen } }) => {
      if (device.kernel.canReset) {
        device.reset();
        return { device, kind: 'kernel-reset' };
      }
      const address = device.address;
      device.close();
      return { device: reopen(address), kind: 'reopen' };
    }),
    // Detach: quiesce, reset through the kernel when it can, close. A device the kernel cannot
    // reset is only closed: a reopen would be the same reset as the close itself.
    release: fromPromise<ReleaseKind, Quiescing>(async ({ input }) => {
      const { device, attachment } = input;
      if (!device.isOpen) return 'already-closed';
      try {
        if (attachment === undefined) stopBusMaster(device);
        else await attachment.release();
        if (!device.kernel.canReset) return 'close';
        device.reset();
        return 'kernel-reset';
      } finally {
        device.close();
      }
    }),
  },
  guards: {
    restartsLeft: ({ context }) => !context.permanent && context.restarts < context.supervision.restart.maxRestarts,
    stopRequested: ({ context }) => context.stopRequested,
    removeRequested: ({ context }) => context.removeRequested,
    pcieErrorPending: ({ context }) => context.pcieError !== undefined,
  },
  delays: {
    backoff: ({ context }) => restartDelay(context.supervision.restart, context.restarts),
  },
  actions: {
    requestStop: assign({ stopRequested: true }),
    requestRemove: assign({ removeRequested: true }),
    notePcieError: ({ context, event }) => {
      if (event.type === 'PCIE_ERROR') context.onNote(`${event.message}; not a fault of its own: the device is already being taken back (reset or released)`);
    },
    rememberPcieError: assign({ pcieError: ({ event }) => (event.type === 'PCIE_ERROR' ? event.message : undefined) }),
  },
}).createMachine({
  id: 'device',
  context: ({ input }) => ({
    ...input,
    attachment: undefined,
    incarnation: 0,
    restarts: 0,
    fault: undefined,
    lastReset: undefined,
    stopRequested: false,
    removeRequested: false,
    pcieError: undefined,
    permanent: false,
    outcome: { kind: 'stopped' },
    released: undefined,
  }),
  initial: 'claimed',
  // Where no state takes it (failed, resetting, detaching, removing).
  on: { PCIE_ERROR: { actions: 'notePcieError' } },
  states: {
    claimed: {
      on: { START: 'attaching', STOP: 'detaching', REQUEST: 'removing', PCIE_ERROR: { actions: 'rememberPcieError' } },
    },
    attaching: {
      invoke: {
        src: 'attach',
        input: ({ context, self }) => ({
          context,
          onWatchdog: (message: string, silence?: Silence) => self.send({ type: 'WATCHDOG', message, ...(silence === undefined ? {} : { silence }) }),
        }),
        onDone: [
          { guard: 'removeRequested', target: 'removing', actions: assign({ attachment: ({ event }) => event.output }) },
          { guard: 'stopRequested', target: 'detaching', actions: assign({ attachment: ({ event }) => event.output }) },
          {
            guard: 'pcieErrorPending',
            target: 'failed',
            actions: assign({
              attachment: ({ event }) => event.output,
              fault: ({ context }) => faultOf('pcie-error', context.pcieError!, context.incarnation),
              pcieError: undefined,
            }),
          },
          { target: 'running', actions: assign({ attachment: ({ event }) => event.output }) },
        ],
        onError: [
          {
            // The attach failed after the error was reported: the error is the cause to report.
            guard: 'pcieErrorPending',
            target: 'failed',
            actions: assign({
              fault: ({ context, event }) => faultOf('pcie-error', `${context.pcieError!} (the attach then failed: ${message(event.error)})`, context.incarnation),
              pcieError: undefined,
            }),
          },
          {
            // What the device does not offer, no restart can change: one fault naming the option, then the release.
            guard: ({ event }) => event.error instanceof UpciError && event.error.code === 'NOT_OFFERED',
            target: 'failed',
            actions: assign({
              fault: ({ context, event }) => faultOf('attach', notOffered(context, message(event.error)), context.incarnation),
              permanent: true,
            }),
          },
          {
            target: 'failed',
            actions: assign({ fault: ({ context, event }) => faultOf('attach', message(event.error), context.incarnation) }),
          },
        ],
      },
      on: {
        STOP: { actions: 'requestStop' },
        REQUEST: { actions: 'requestRemove' },
        PCIE_ERROR: { actions: 'rememberPcieError' },
      },
    },
    running: {
      invoke: {
        src: 'driver',
        // running is only entered with an attachment (attaching's onDone assigns it).
        input: ({ context }) => context.attachment!,
        onDone: { target: 'detaching', actions: assign({ outcome: { kind: 'finished' } }) },
        onError: {
          target: 'failed',
          actions: assign({ fault: ({ context, event }) => faultOf('crash', message(event.error), context.incarnation) }),
        },
      },
      on: {
        STOP: 'detaching',
        RELOAD: 'reloading',
        REQUEST: 'removing',
        WATCHDOG: {
          target: 'failed',
          actions: assign({
            fault: ({ context, event }) => faultOf('watchdog', event.message, context.incarnation, event.silence),
          }),
        },
        PCIE_ERROR: {
          target: 'failed',
          actions: assign({ fault: ({ context, event }) => faultOf('pcie-error', event.message, context.incarnation) }),
        },
      },
    },
    // `upci run --watch`: the driver's module changed. The old incarnation detaches (in its thread) and the
    // device is taken back, reset through the kernel when it can be, and attached again with the new code
    // in a new thread; the device stays claimed throughout (no reopen), and no restart is counted.
    reloading: {
      invoke: {
        src: 'reload',
        input: ({ context }) => quiescing(context),
        onDone: [
          { guard: 'removeRequested', target: 'removing', actions: assign({ attachment: undefined }) },
          { target: 'attaching', actions: assign({ attachment: undefined, incarnation: ({ context }) => context.incarnation + 1 }) },
        ],
        onError: {
          target: 'failed',
          actions: assign({
            attachment: undefined,
            fault: ({ context, event }) => faultOf('crash', `reload: ${message(event.error)}`, context.incarnation),
          }),
        },
      },
      on: { STOP: { actions: 'requestStop' }, REQUEST: { actions: 'requestRemove' }, PCIE_ERROR: { actions: 'rememberPcieError' } },
    },
    failed: {
      invoke: {
        src: 'quiesce',
        input: ({ context }) => quiescing(context),
        onDone: [
          { guard: 'removeRequested', target: 'removing', actions: assign({ attachment: undefined }) },
          { guard: 'restartsLeft', target: 'resetting', actions: assign({ attachment: undefined }) },
          { target: 'detaching', actions: assign({ attachment: undefined, outcome: ({ context }) => ({ kind: 'gave-up', fault: context.fault! }) as Outcome }) },
        ],
        // A quiesce that fails still leaves the reset (or close) to stop the device.
        onError: [
          { guard: 'removeRequested', target: 'removing', actions: assign({ attachment: undefined }) },
          { guard: 'restartsLeft', target: 'resetting', actions: assign({ attachment: undefined }) },
          { target: 'detaching', actions: assign({ attachment: undefined, outcome: ({ context }) => ({ kind: 'gave-up', fault: context.fault! }) as Outcome }) },
        ],
      },
      on: { STOP: 'detaching', REQUEST: { actions: 'requestRemove' } },
    },
    resetting: {
      initial: 'reset',
      states: {
        reset: {
          invoke: {
            src: 'reset',
            input: ({ context }) => ({ device: context.device, reopen: context.reopen }),
            onDone: [
              { guard: 'removeRequested', target: '#device.removing', actions: assign({ device: ({ event }) => event.output.device }) },
              { guard: 'stopRequested', target: '#device.detaching', actions: assign({ device: ({ event }) => event.output.device, lastReset: ({ event }) => event.output.kind }) },
              {
                target: 'backoff',
                actions: assign({
                  device: ({ event }) => event.output.device,
                  lastReset: ({ event }) => event.output.kind,
                  restarts: ({ context }) => context.restarts + 1,
                }),
              },
            ],
            onError: { target: '#device.released', actions: assign({ outcome: ({ event }) => ({ kind: 'lost', error: message(event.error) }) as Outcome }) },
          },
          on: { STOP: { actions: 'requestStop' }, REQUEST: { actions: 'requestRemove' } },
        },
        backoff: {
          after: { backoff: { target: '#device.attaching', actions: assign({ incarnation: ({ context }) => context.incarnation + 1 }) } },
          on: { STOP: '#device.detaching', REQUEST: '#device.removing' },
        },
      },
    },
    detaching: {
      invoke: {
        src: 'release',
        input: ({ context }) => quiescing(context),
        onDone: { target: 'released', actions: assign({ attachment: undefined, released: ({ event }) => ({ how: event.output, error: undefined }) }) },
        // The device is closed even so (release closes in a finally); the error is reported.
        onError: { target: 'released', actions: assign({ attachment: undefined, released: ({ event }) => ({ how: 'close' as ReleaseKind, error: message(event.error) }) }) },
      },
    },
    removing: {
      invoke: {
        src: 'remove',
        input: ({ context }) => quiescing(context),
        onDone: { target: 'released', actions: assign({ attachment: undefined, outcome: { kind: 'removed' } as Outcome, released: { how: 'close', error: undefined } as Release }) },
        // Closed even so (remove closes in a finally); the error is reported.
        onError: {
          target: 'released',
          actions: assign({ attachment: undefined, outcome: { kind: 'removed' } as Outcome, released: ({ event }) => ({ how: 'close' as ReleaseKind, error: message(event.error) }) }),
        },
      },
    },
    released: {
      type: 'final',
    },
  },
  output: ({ context }) => ({
    address: context.address,
    outcome: context.outcome,
    restarts: context.restarts,
    released: context.released ?? { how: 'already-closed', error: undefined },
  }),
});

function quiescing({ device, attachment }: DeviceContext): Quiescing {
  return { device, attachment };
}

export type DeviceActorRef = ActorRefFrom<typeof deviceMachine>;

/** The top-level state of a device actor's snapshot. */
export function stateName(value: unknown): DeviceStateName {
  return (typeof value === 'string' ? value : Object.keys(value as object)[0]) as DeviceStateName;
}
