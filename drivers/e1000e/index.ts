/** The e1000e driver; its packet port is the host's (DriverHost.packetPort, drivers/packet.ts). */
export { e1000eDriver } from './driver.js';
