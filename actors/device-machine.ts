/**
 * The device actor: one per claimed PCI function, supervising its driver.
 *
 *   claimed ─START→ attaching ──→ running ──(driver done / STOP)──→ detaching ──→ released
 *                      │             │ (driver threw, rejected, watchdog)
 *                      └─────────────┴──→ failed ──→ resetting ──(back-off)──→ attaching
 *                                          │ (no restarts left)
 *                                          └──────→ detaching
 *
 * failed quiesces the device (bus master off, interrupts disabled, DMA
 * unmapped, BARs revoked); resetting resets it through the kernel port, or,
 * when the port cannot reset the function (edu under VFIO), closes and
 * reopens it, then waits out the back-off. detaching quiesces and closes.
 * Every state is entered as its own macrostep, so each transition shows in
 * the actor's snapshots and in the inspection stream.
 */
import { assign, fromPromise, setup, type ActorRefFrom } from 'xstate';
import type { AnyDriver, DriverInput, OptionsOf, OptionsSchema } from '../drivers/contract.js';
import type { PciAddress } from '../kernel/pci-address.js';
import type { PciDevice } from '../pci/device.js';
import { restartDelay } from './backoff.js';
import type { Supervision } from './config.js';
import { AttachedBus, stopBusMaster } from './driver-bus.js';
import type { DeviceMeter } from './meter.js';
import type { BlockDevice } from '../drivers/block.js';

export type DeviceStateName = 'claimed' | 'attaching' | 'running' | 'failed' | 'resetting' | 'detaching' | 'released';

/** Why a driver incarnation ended badly. */
export interface Fault {
  readonly kind: 'attach' | 'crash' | 'watchdog';
  readonly message: string;
  readonly incarnation: number;
}

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
  | { readonly kind: 'forced' };

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
  /** The config entry's name: the driver's block devices are named after it. */
  readonly name: string;
  /** Publishes a driver's block device; the returned function withdraws it. */
  readonly provide: (device: BlockDevice) => () => void;
}

interface Attachment {
  readonly bus: AttachedBus;
  readonly resources: unknown;
}

export interface DeviceContext extends DeviceActorInput {
  /** The device as now open; after a reopen, the new handle. */
  readonly device: PciDevice;
  readonly attachment: Attachment | undefined;
  readonly incarnation: number;
  /** Restarts so far; the back-off and the give-up rule count them. */
  readonly restarts: number;
  readonly fault: Fault | undefined;
  readonly lastReset: ResetKind | undefined;
  /** STOP arrived while an attach or reset was in flight: finish it, then detach. */
  readonly stopRequested: boolean;
  readonly outcome: Outcome;
  readonly released: Release | undefined;
}

export type DeviceEvent =
  | { type: 'START' }
  | { type: 'STOP' }
  | { type: 'WATCHDOG'; vector: number; waitedMs: number };

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

/** Quiesces whatever is attached, and at least turns bus mastering off. */
function quiesce(device: PciDevice, attachment: Attachment | undefined): void {
  try {
    stopBusMaster(device);
  } finally {
    attachment?.bus.release();
  }
}

export function deviceMachineFor(driver: AnyDriver) {
  return setup({
    types: {
      input: {} as DeviceActorInput,
      context: {} as DeviceContext,
      events: {} as DeviceEvent,
      output: {} as DeviceOutput,
    },
    actors: {
      attach: fromPromise<Attachment, { context: DeviceContext; onStall: (vector: number, waitedMs: number) => void }>(
        async ({ input: { context, onStall } }) => {
          const bus = new AttachedBus(context.device, context.incarnation, {
            name: context.name,
            onProvide: context.provide,
            watchdogMs: context.supervision.watchdogMs,
            meter: context.meter,
            onStall,
            onNote: context.onNote,
          });
          const limit = context.supervision.attachTimeoutMs;
          let timer: NodeJS.Timeout | undefined;
          try {
            const resources = await Promise.race([
              Promise.resolve().then(() => context.driver.attach(bus, context.options)),
              new Promise<never>((_, reject) => {
                timer = setTimeout(() => reject(new Error(`${context.driver.name}: attach did not finish within ${limit} ms (attachTimeoutMs)`)), limit);
              }),
            ]);
            return { bus, resources };
          } catch (e) {
            // A late attach finds its bus reclaimed: every call on it throws.
            bus.release();
            throw e;
          } finally {
            clearTimeout(timer);
          }
        },
      ),
      driver: driver.machine,
      quiesce: fromPromise<void, { device: PciDevice; attachment: Attachment | undefined }>(async ({ input }) => quiesce(input.device, input.attachment)),
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
      release: fromPromise<ReleaseKind, { device: PciDevice; attachment: Attachment | undefined; driver: AnyDriver; timeoutMs: number; onNote: (m: string) => void }>(async ({ input: { device, attachment, driver, timeoutMs, onNote } }) => {
        if (!device.isOpen) return 'already-closed';
        try {
          if (attachment !== undefined && driver.detach !== undefined) {
            // A clean detach first (an NVMe shutdown); a failing or hanging one still ends in the quiesce.
            let timer: NodeJS.Timeout | undefined;
            try {
              await Promise.race([
                Promise.resolve().then(() => driver.detach!(attachment.bus, attachment.resources)),
                new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`detach did not finish within ${timeoutMs} ms`)), timeoutMs))),
              ]);
            } catch (e) {
              onNote(`${driver.name}: detach failed: ${message(e)}; quiescing anyway`);
            } finally {
              clearTimeout(timer);
            }
          }
          quiesce(device, attachment);
          if (!device.kernel.canReset) return 'close';
          device.reset();
          return 'kernel-reset';
        } finally {
          device.close();
        }
      }),
    },
    guards: {
      restartsLeft: ({ context }) => context.restarts < context.supervision.restart.maxRestarts,
      stopRequested: ({ context }) => context.stopRequested,
    },
    delays: {
      backoff: ({ context }) => restartDelay(context.supervision.restart, context.restarts),
    },
    actions: {
      requestStop: assign({ stopRequested: true }),
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
      outcome: { kind: 'stopped' },
      released: undefined,
    }),
    initial: 'claimed',
    states: {
      claimed: {
        on: { START: 'attaching', STOP: 'detaching' },
      },
      attaching: {
        invoke: {
          src: 'attach',
          input: ({ context, self }) => ({
            context,
            onStall: (vector: number, waitedMs: number) => self.send({ type: 'WATCHDOG', vector, waitedMs }),
          }),
          onDone: [
            { guard: 'stopRequested', target: 'detaching', actions: assign({ attachment: ({ event }) => event.output }) },
            { target: 'running', actions: assign({ attachment: ({ event }) => event.output }) },
          ],
          onError: {
            target: 'failed',
            actions: assign({ fault: ({ context, event }) => ({ kind: 'attach', message: message(event.error), incarnation: context.incarnation }) }),
          },
        },
        on: { STOP: { actions: 'requestStop' } },
      },
      running: {
        invoke: {
          src: 'driver',
          // running is only entered with an attachment (attaching's onDone assigns it).
          input: ({ context }: { context: DeviceContext }): DriverInput<unknown, unknown> => ({
            bus: context.attachment!.bus,
            options: context.options,
            resources: context.attachment!.resources,
          }),
          onDone: { target: 'detaching', actions: assign({ outcome: { kind: 'finished' } }) },
          onError: {
            target: 'failed',
            actions: assign({ fault: ({ context, event }) => ({ kind: 'crash', message: message(event.error), incarnation: context.incarnation }) }),
          },
        },
        on: {
          STOP: 'detaching',
          WATCHDOG: {
            target: 'failed',
            actions: assign({
              fault: ({ context, event }) => ({
                kind: 'watchdog',
                message: `INTx vector ${event.vector} not acked within ${event.waitedMs} ms: the driver is hung (line left masked)`,
                incarnation: context.incarnation,
              }),
            }),
          },
        },
      },
      failed: {
        invoke: {
          src: 'quiesce',
          input: ({ context }) => ({ device: context.device, attachment: context.attachment }),
          onDone: [
            { guard: 'restartsLeft', target: 'resetting', actions: assign({ attachment: undefined }) },
            { target: 'detaching', actions: assign({ attachment: undefined, outcome: ({ context }) => ({ kind: 'gave-up', fault: context.fault! }) as Outcome }) },
          ],
          // A quiesce that fails still leaves the reset (or close) to stop the device.
          onError: [
            { guard: 'restartsLeft', target: 'resetting', actions: assign({ attachment: undefined }) },
            { target: 'detaching', actions: assign({ attachment: undefined, outcome: ({ context }) => ({ kind: 'gave-up', fault: context.fault! }) as Outcome }) },
          ],
        },
        on: { STOP: 'detaching' },
      },
      resetting: {
        initial: 'reset',
        states: {
          reset: {
            invoke: {
              src: 'reset',
              input: ({ context }) => ({ device: context.device, reopen: context.reopen }),
              onDone: [
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
            on: { STOP: { actions: 'requestStop' } },
          },
          backoff: {
            after: { backoff: { target: '#device.attaching', actions: assign({ incarnation: ({ context }) => context.incarnation + 1 }) } },
            on: { STOP: '#device.detaching' },
          },
        },
      },
      detaching: {
        invoke: {
          src: 'release',
          input: ({ context }) => ({
            device: context.device, attachment: context.attachment, driver: context.driver, timeoutMs: context.supervision.attachTimeoutMs, onNote: context.onNote,
          }),
          onDone: { target: 'released', actions: assign({ attachment: undefined, released: ({ event }) => ({ how: event.output, error: undefined }) }) },
          // The device is closed even so (release closes in a finally); the error is reported.
          onError: { target: 'released', actions: assign({ attachment: undefined, released: ({ event }) => ({ how: 'close' as ReleaseKind, error: message(event.error) }) }) },
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
}

export type DeviceActorRef = ActorRefFrom<ReturnType<typeof deviceMachineFor>>;

/** The top-level state of a device actor's snapshot. */
export function stateName(value: unknown): DeviceStateName {
  return (typeof value === 'string' ? value : Object.keys(value as object)[0]) as DeviceStateName;
}
