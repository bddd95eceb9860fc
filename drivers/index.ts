/** The drivers upci ships, by name. */
import type { DriverRegistry } from './contract.js';
import { e1000eDriver } from './e1000e/index.js';
import { eduDriver } from './edu.js';
import { nvmeDriver } from './nvme/index.js';
import { pciTestdevDriver } from './pci-testdev.js';
import { virtioBlkDriver } from './virtio-blk/index.js';
import { virtioNetDriver } from './virtio-net/index.js';

export const builtinDrivers: DriverRegistry = new Map([eduDriver, pciTestdevDriver, nvmeDriver, e1000eDriver, virtioBlkDriver, virtioNetDriver].map((d) => [d.name, d]));
