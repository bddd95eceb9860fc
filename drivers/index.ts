/** The drivers upci ships, by name. */
import type { DriverRegistry } from './contract.js';
import { eduDriver } from './edu.js';
import { nvmeDriver } from './nvme/index.js';
import { pciTestdevDriver } from './pci-testdev.js';

export const builtinDrivers: DriverRegistry = new Map([eduDriver, pciTestdevDriver, nvmeDriver].map((d) => [d.name, d]));
