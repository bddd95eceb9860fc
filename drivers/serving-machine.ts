/**
 * The machine of a driver whose running life is one service loop: a
 * callback actor that reaps the device's interrupts (NVMe, virtio-blk). It
 * serves until the host takes the device back; a `fault` the loop sends
 * back goes to the bus's fault funnel (DriverBus.fault), which the host's
 * supervision turns into a take-back and a restart. (A loop holding the
 * bus may call bus.fault itself; the event is for loops that hold only
 * their resources.) A driver whose bring-up runs after attach (e1000e: a
 * reset that sleeps on the bus's timers) gives it as `bringUp`: the
 * machine serves once it resolved, and its rejection goes to the fault
 * funnel like a fault the loop sends back.
 */
import { fromPromise, setup, type CallbackActorLogic, type PromiseActorLogic } from 'xstate';
import type { DriverBus, DriverInput } from './contract.js';

/** What a service loop sends back when the driver fails (a throw in its handler, a device asking to be reset). */
export type DriverFault = { type: 'fault'; error: unknown };

/** The action that hands a DriverFault event to the bus: a driver machine's one way to fail (no action throws). */
export const reportFault = ({ context, event }: { context: { readonly bus: DriverBus }; event: DriverFault }) => context.bus.fault(event.error);

export function servingMachine<O, R>(id: string, service: CallbackActorLogic<DriverFault, R>, bringUp?: (resources: R) => Promise<void>) {
  return setup({
    types: {
      input: {} as DriverInput<O, R>,
      context: {} as DriverInput<O, R>,
      events: {} as DriverFault,
    },
    // Its input is R by this function's signature; XState's invoke typing cannot see through a generic R.
    actors: {
      service: service as unknown as CallbackActorLogic<DriverFault, unknown>,
      bringUp: fromPromise<void, R>(({ input }) => bringUp!(input)) as unknown as PromiseActorLogic<void, unknown>,
    },
    actions: { fault: reportFault },
  }).createMachine({
    id,
    context: ({ input }) => input,
    initial: bringUp === undefined ? 'serving' : 'starting',
    states: {
      // Entered only with a bringUp.
      starting: {
        invoke: {
          src: 'bringUp',
          input: ({ context }: { context: DriverInput<O, R> }) => context.resources,
          onDone: 'serving',
          onError: { actions: ({ context, event }) => context.bus.fault(event.error) },
        },
      },
      serving: {
        invoke: { src: 'service', input: ({ context }: { context: DriverInput<O, R> }) => context.resources },
        on: {
          fault: { actions: 'fault' },
        },
      },
    },
  });
}
