/**
 * Where a driver's code comes from, as data a worker thread can be given:
 * a built-in driver's name, or the URL of a module that exports one. The
 * worker imports the driver itself (a function cannot cross threads).
 */
import { fileURLToPath } from 'node:url';
import type { AnyDriver } from '../drivers/contract.js';
import { builtinDrivers } from '../drivers/index.js';
import { builtinModuleFile, type DriverSource } from '../workers/driver-import.js';

const loaded = new WeakMap<AnyDriver, DriverSource>();

/** Records that `driver` was imported from `url` (config files naming a module path or a package). */
export function rememberSource(driver: AnyDriver, url: string): void {
  loaded.set(driver, { kind: 'module', url });
}

/** How a worker can import `driver`; undefined for a driver object made in this thread only (unit tests' registries). */
export function sourceOf(driver: AnyDriver): DriverSource | undefined {
  if (builtinDrivers.get(driver.name) === driver) return { kind: 'builtin', name: driver.name };
  return loaded.get(driver);
}

/** The file a worker imports `driver` from (a built-in's own module under drivers/), if a worker can. */
export function moduleFileOf(driver: AnyDriver): string | undefined {
  const source = sourceOf(driver);
  if (source === undefined) return undefined;
  if (source.kind === 'module') return fileURLToPath(source.url);
  return builtinModuleFile(source.name);
}
