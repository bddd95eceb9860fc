/** The e1000e driver and its packet port. */
export { e1000eDriver } from './driver.js';
export { e1000ePort, NetPort, type NetCounters, type PortInfo } from './port.js';
export type { RxFrame } from './rx-ring.js';
export type { LinkState, Mac } from './mac.js';
export { formatMac, parseMac } from './mac.js';
