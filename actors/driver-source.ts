/**
 * Where a driver's code comes from, as data a worker thread can be given:
 * a built-in driver's name, or the URL of a module that exports one. The
 * worker imports the driver itself (a function cannot cross threads).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { AnyDriver } from '../drivers/contract.js';
import { builtinDrivers } from '../drivers/index.js';

export type DriverSource =
  | { readonly kind: 'builtin'; readonly name: string }
  | { readonly kind: 'module'; readonly url: string };

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

/** A driver module's export: the default export, or the one named export that is a driver. */
export function driverExport(module: Record<string, unknown>): AnyDriver | undefined {
  const isDriver = (v: unknown): v is AnyDriver => typeof v === 'object' && v !== null
    && typeof (v as AnyDriver).name === 'string' && typeof (v as AnyDriver).attach === 'function'
    && Array.isArray((v as AnyDriver).match) && typeof (v as AnyDriver).machine === 'object' && (v as AnyDriver).machine !== null;
  if (isDriver(module.default)) return module.default;
  const found = Object.values(module).filter(isDriver);
  return found.length === 1 ? found[0] : undefined;
}

/** The file a worker imports `driver` from (a built-in's own module under drivers/), if a worker can. */
export function moduleFileOf(driver: AnyDriver): string | undefined {
  const source = sourceOf(driver);
  if (source === undefined) return undefined;
  if (source.kind === 'module') return fileURLToPath(source.url);
  return [`../drivers/${source.name}.js`, `../drivers/${source.name}/index.js`].map((p) => fileURLToPath(new URL(p, import.meta.url))).find((f) => existsSync(f));
}

export async function importDriver(source: DriverSource): Promise<AnyDriver> {
  if (source.kind === 'builtin') {
    const driver = builtinDrivers.get(source.name);
    if (driver === undefined) throw new Error(`no built-in driver ${JSON.stringify(source.name)}`);
    return driver;
  }
  const driver = driverExport(await import(source.url) as Record<string, unknown>);
  if (driver === undefined) throw new Error(`${source.url} exports no driver`);
  return driver;
}
