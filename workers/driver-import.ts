/**
 * A driver thread's import of its driver: only that driver's own module, so
 * an isolate compiles one driver, not every built-in one (drivers/index.ts
 * is the main thread's registry, never imported here). A driver thread
 * takes 5-18 s to load in the TCG guest; most of it is compiling modules.
 */
import { existsSync } from 'node:fs';
import { pathToFileURL, fileURLToPath } from 'node:url';
import type { AnyDriver } from '../drivers/contract.js';

export type DriverSource =
  | { readonly kind: 'builtin'; readonly name: string }
  | { readonly kind: 'module'; readonly url: string };

/** A driver module's export: the default export, or the one named export that is a driver. */
export function driverExport(module: Record<string, unknown>): AnyDriver | undefined {
  const isDriver = (v: unknown): v is AnyDriver => typeof v === 'object' && v !== null
    && typeof (v as AnyDriver).name === 'string' && typeof (v as AnyDriver).attach === 'function'
    && Array.isArray((v as AnyDriver).match) && typeof (v as AnyDriver).machine === 'object' && (v as AnyDriver).machine !== null;
  if (isDriver(module.default)) return module.default;
  const found = Object.values(module).filter(isDriver);
  return found.length === 1 ? found[0] : undefined;
}

/** The file of the built-in driver `name`: its own module under drivers/ (`<name>.js` or `<name>/index.js`), if there is one. */
export function builtinModuleFile(name: string): string | undefined {
  return [`../drivers/${name}.js`, `../drivers/${name}/index.js`].map((p) => fileURLToPath(new URL(p, import.meta.url))).find((f) => existsSync(f));
}

export async function importDriver(source: DriverSource): Promise<AnyDriver> {
  const file = source.kind === 'builtin' ? builtinModuleFile(source.name) : undefined;
  if (source.kind === 'builtin' && file === undefined) throw new Error(`no built-in driver ${JSON.stringify(source.name)}`);
  const url = file === undefined ? (source as { url: string }).url : pathToFileURL(file).href;
  const driver = driverExport(await import(url) as Record<string, unknown>);
  if (driver === undefined) throw new Error(`${url} exports no driver`);
  if (source.kind === 'builtin' && driver.name !== source.name) throw new Error(`${url} exports the driver ${JSON.stringify(driver.name)}, not ${JSON.stringify(source.name)}`);
  return driver;
}
