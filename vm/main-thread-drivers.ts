/**
 * The built-in drivers and `<name>-main`: `driver` run in the host's main
 * thread, where the block device it provides is the driver's own object
 * (what benchmarks' load generators and tests that reach into a driver use).
 */
import type { AnyDriver, DriverRegistry } from '../drivers/contract.js';
import { builtinDrivers } from '../drivers/index.js';

export function withMainThread(driver: AnyDriver): DriverRegistry {
  const name = `${driver.name}-main`;
  return new Map([...builtinDrivers, [name, { ...driver, name, thread: 'main' as const }]]);
}
