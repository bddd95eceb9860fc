/**
 * The e1000e driver module (Intel 82574L, QEMU's `e1000e`): attach maps
 * BAR 0 and allocates the rings; the machine brings the device up, then
 * services it until stopped. An exception in an interrupt handler or in
 * a polling pass, or a failed bring-up, goes to the bus's fault funnel
 * (DriverBus.fault), a driver crash: the host quiesces, resets and
 * restarts it, and the host's packet port carries on with the next incarnation.
 */
import { fromCallback } from 'xstate';
import { defineDriver } from '../contract.js';
import { servingMachine, type DriverFault } from '../serving-machine.js';
import { E1000e, type E1000eOptions } from './nic.js';
import { e1000eOptions } from './options.js';

// The NIC reports its own faults to the bus (E1000e.fail); stopping this actor stops the device.
const service = fromCallback<DriverFault, E1000e>(({ input: nic }) => {
  if (nic.polled) nic.runPolling();
  return () => nic.stop();
});

const machine = servingMachine<E1000eOptions, E1000e>('e1000e', service, (nic) => nic.start());

export const e1000eDriver = defineDriver({
  name: 'e1000e',
  description: 'Intel 82574L (QEMU e1000e): rings, MSI-X, link events, and a packet port (DriverHost.packetPort)',
  match: [{ vendor: 0x8086, device: 0x10d3 }],
  options: e1000eOptions,
  attach: E1000e.attach,
  machine,
});
