/** The driver kit: what a driver is built from (rings, trackers, bus addresses, registered memory, NIC buffers, vectors, the packet port; the bus's timers and the poller). */
export { storeBus64, writeRegister64, high32 } from './bus-address.js';
export { Ring, DescriptorRing, type Doorbell } from './ring.js';
export { Trackers, entryViews } from './tracker.js';
export { RegisteredBlockDevice, RegisteredRequests, Mapping, type Registration } from './registered.js';
export { RxBuffers } from './rx-buffers.js';
export { TxBuffers } from './tx-buffers.js';
export { VectorService, serveInterrupts, type VectorHandler } from './vectors.js';
export { NicPort, type PortTransmit } from './nic-port.js';
export { Poller, type PollMode, type PollerOptions } from './poller.js';
export type { DriverTimer, DriverTimers } from './timers.js';
