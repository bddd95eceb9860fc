/**
 * Drivers from outside upci: a config entry's "driver" may name a built-in
 * driver, a module path (relative to the config file: "./my-driver.js"), or
 * an installed package ("upci-driver-foo", resolved from the config file's
 * folder as Node resolves it). The module is imported here, in the main
 * thread, so that its match table and options are checked with the rest of
 * the config; each driver worker then imports it again by URL.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { AnyDriver, DriverRegistry } from '../drivers/contract.js';
import { parseJsonWithComments } from './config.js';
import { ConfigError } from './config-error.js';
import { driverExport } from '../workers/driver-import.js';
import { rememberSource } from './driver-source.js';

const isPath = (specifier: string) => specifier.startsWith('./') || specifier.startsWith('../') || isAbsolute(specifier);

/** The URL `specifier` names, from a config file at `configFile`; a ConfigError at `key` when there is nothing there. */
function locate(specifier: string, configFile: string, key: string): string {
  if (isPath(specifier)) {
    const path = resolve(dirname(configFile), specifier);
    if (!existsSync(path)) {
      throw new ConfigError(key, `no driver module at ${path} (${JSON.stringify(specifier)}, relative to the config file)`, {
        fix: 'give the path of the compiled .js module, relative to the config file',
      });
    }
    return pathToFileURL(path).href;
  }
  try {
    return pathToFileURL(createRequire(resolve(configFile)).resolve(specifier)).href;
  } catch (cause) {
    throw new ConfigError(key, `${JSON.stringify(specifier)} is neither a built-in driver nor an installed package`, {
      fix: `install it (npm install ${specifier}) next to the config file, or write a path starting with ./`,
      cause,
    });
  }
}

/**
 * `registry` plus the drivers the config file names by module path or
 * package, each under the name the config gives it. A config that cannot
 * be read or parsed is left to loadHostConfig to report.
 */
export async function withConfigDrivers(configFile: string, registry: DriverRegistry): Promise<DriverRegistry> {
  let value: unknown;
  try {
    value = parseJsonWithComments(readFileSync(configFile, 'utf8'));
  } catch {
    return registry;
  }
  const devices = (value as { devices?: unknown }).devices;
  if (!Array.isArray(devices)) return registry;
  const added = new Map<string, AnyDriver>(registry);
  for (const [i, entry] of devices.entries()) {
    const specifier = (entry as { driver?: unknown } | null)?.driver;
    if (typeof specifier !== 'string' || added.has(specifier) || (!isPath(specifier) && registry.has(specifier))) continue;
    const key = `devices[${i}].driver`;
    const url = locate(specifier, configFile, key);
    let module: Record<string, unknown>;
    try {
      module = await import(url) as Record<string, unknown>;
    } catch (cause) {
      throw new ConfigError(key, `the driver module ${url} failed to load: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    }
    const driver = driverExport(module);
    if (driver === undefined) {
      throw new ConfigError(key, `${url} is not a driver module: it exports no driver`, {
        fix: 'export default defineDriver({ name, description, match, options, attach, machine }) from upci/drivers/contract.js',
      });
    }
    rememberSource(driver, url);
    added.set(specifier, driver);
  }
  return added;
}
