/**
 * The e1000e driver module (Intel 82574L, QEMU's `e1000e`): attach maps
 * BAR 0 and allocates the rings; the machine brings the device up, then
 * services it until stopped. An exception in an interrupt handler or in
 * the polling loop is a driver crash: the host quiesces, resets and
 * restarts it, and the host's packet port carries on with the next incarnation.
 */
import { fromCallback, fromPromise, setup } from 'xstate';
import { defineDriver, type DriverInput } from '../contract.js';
import type { DriverFault } from '../serving-machine.js';
import { E1000e, type E1000eOptions } from './nic.js';
import { e1000eOptions } from './options.js';

type Input = DriverInput<E1000eOptions, E1000e>;

const machine = setup({
  types: {
    input: {} as Input,
    context: {} as Input,
    events: {} as DriverFault,
  },
  actors: {
    bringUp: fromPromise<void, E1000e>(({ input }) => input.start()),
    service: fromCallback<DriverFault, E1000e>(({ input: nic, sendBack }) => {
      const fail = (error: unknown) => {
        nic.stop();
        sendBack({ type: 'fault', error });
      };
      nic.onFault = fail;
      if (nic.polled) nic.runPolling(fail);
      return () => nic.stop();
    }),
  },
  actions: {
    crash: ({ event }) => {
      throw event.error;
    },
  },
}).createMachine({
  id: 'e1000e',
  context: ({ input }) => input,
  initial: 'starting',
  states: {
    starting: {
      invoke: {
        src: 'bringUp',
        input: ({ context }) => context.resources,
        onDone: 'running',
        onError: { actions: ({ event }) => { throw event.error; } },
      },
    },
    running: {
      invoke: { src: 'service', input: ({ context }) => context.resources },
      on: { fault: { actions: 'crash' } },
    },
  },
});

export const e1000eDriver = defineDriver({
  name: 'e1000e',
  description: 'Intel 82574L (QEMU e1000e): rings, MSI-X, link events, and a packet port (DriverHost.packetPort)',
  match: [{ vendor: 0x8086, device: 0x10d3 }],
  options: e1000eOptions,
  attach: E1000e.attach,
  machine,
});
