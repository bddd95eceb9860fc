/**
 * The host config file (JSON) and its validation. Every problem is one
 * ConfigError naming the offending key; nothing is claimed until the whole
 * file is valid.
 *
 *   {
 *     "watchdogMs": 1000,                       // no heartbeat from a driver's thread, or an INTx event not acked, within this: hung
 *     "heartbeatMs": 100,                       // how often a driver thread's event loop beats (below watchdogMs)
 *     "heapLimitMb": 256,                       // a driver thread's V8 heap limit: a leaking driver is stopped and restarted
 *     "attachTimeoutMs": 30000,                 // an attach (reset, Identify...) not done within this failed
 *     "restart": { "initialDelayMs": 100, "maxDelayMs": 5000, "maxRestarts": 5 },
 *     "statsIntervalMs": 1000,                  // interrupt-rate / DMA sampling
 *     "shutdownTimeoutMs": 5000,                // graceful release bound, then devices are force-closed
 *     "devices": [
 *       { "address": "0000:00:04.0", "driver": "edu", "options": { "interrupt": "intx" } },
 *       { "address": "0000:00:07.0", "name": "nvme0", "driver": "nvme" },  // block devices nvme0n1, nvme0n2...
 *       { "address": "0000:00:06.0" },          // no driver: the first whose match table fits
 *       { "match": { "vendor": "1b36", "device": "0010" }, "driver": "nvme", "bind": true }  // every such device, as it appears
 *     ],
 *     "exports": [                              // to the OS, while the provider runs (actors/export-config.ts)
 *       { "nbd": "nvme0n1", "socket": "/run/upci/nvme0n1.sock" }
 *     ]
 *   }
 */
import { readFileSync } from 'node:fs';
import type { AnyDriver, DriverRegistry, OptionsOf, OptionsSchema } from '../drivers/contract.js';
import { parsePciAddress, type PciAddress } from '../kernel/pci-address.js';
import { ConfigError, describe } from './config-error.js';
import { at, integer, object, onlyKeys, type Json } from './config-schema.js';
import { parseExports, type ExportEntry } from './export-config.js';
import { validateOptions } from './options.js';

export interface RestartPolicy {
  /** Delay before the first restart; each further one doubles it. */
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  /** Restarts allowed before the device is given up (released). */
  readonly maxRestarts: number;
}

export interface Supervision {
  /** A driver thread whose heartbeat has not moved for this long, or an INTx event not acked within it: the driver is hung. */
  readonly watchdogMs: number;
  /** The period of a driver thread's heartbeat; a hang is seen within watchdogMs + heartbeatMs. */
  readonly heartbeatMs: number;
  /** A driver thread's heap limit (V8 old generation, resourceLimits.maxOldGenerationSizeMb). */
  readonly heapLimitMb: number;
  /** A driver's attach (it may be async: a controller reset, Identify) not done within this is an attach fault. */
  readonly attachTimeoutMs: number;
  readonly restart: RestartPolicy;
}

/** Which driver a device entry gets: named in the config (options checked now), or found by match once the device is open. */
export type DriverChoice =
  | { readonly kind: 'named'; readonly driver: AnyDriver; readonly options: OptionsOf<OptionsSchema> }
  | { readonly kind: 'match'; readonly options: unknown };

/**
 * Which devices a match entry claims: every field given must equal the
 * device's (`classPrefix`: the leading hex digits of its class code, e.g.
 * "0108" for NVMe; `slot`: the name of the physical slot it sits in, as
 * /sys/bus/pci/slots names it).
 */
export interface EntryMatch {
  readonly vendor?: number;
  readonly device?: number;
  readonly classPrefix?: string;
  readonly subsystemVendor?: number;
  readonly subsystemDevice?: number;
  readonly slot?: string;
}

interface EntryCommon {
  /** Where the entry is in the file, e.g. `devices[1]`, for later errors. */
  readonly path: string;
  readonly choice: DriverChoice;
  readonly supervision: Supervision;
  /** The host may hand a device of this entry that is not bound to vfio-pci to vfio-pci itself ("bind"; root only). */
  readonly bind: boolean;
}

/** A device named by its address ("address"): it must be there when the host starts or the entry is added. */
export interface AddressEntry extends EntryCommon {
  readonly address: PciAddress;
  readonly match?: undefined;
  /** What the driver's block devices are named after ("name"; default: the address). */
  readonly name: string;
}

/**
 * Devices named by a match ("match"): each present one is claimed as it
 * appears, unless an address entry names it. With a "name", at most one
 * device at a time (it gets the name); without, every match, each named
 * after its address.
 */
export interface MatchEntry extends EntryCommon {
  readonly address?: undefined;
  readonly match: EntryMatch;
  readonly name: string | undefined;
}

export type DeviceEntry = AddressEntry | MatchEntry;

export interface HostConfig {
  readonly devices: readonly DeviceEntry[];
  /** What is exported to the OS (actors/export-config.ts), in the file's order. */
  readonly exports: readonly ExportEntry[];
  readonly statsIntervalMs: number;
  readonly shutdownTimeoutMs: number;
}

export const DEFAULT_SUPERVISION: Supervision = {
  watchdogMs: 1000,
  heartbeatMs: 100,
  heapLimitMb: 256,
  attachTimeoutMs: 30_000,
  restart: { initialDelayMs: 100, maxDelayMs: 5000, maxRestarts: 5 },
};

function restartPolicy(value: unknown, path: string, base: RestartPolicy): RestartPolicy {
  if (value === undefined) return base;
  const r = object(value, path);
  onlyKeys(r, path, ['initialDelayMs', 'maxDelayMs', 'maxRestarts']);
  const initialDelayMs = integer(r.initialDelayMs, `${path}.initialDelayMs`, base.initialDelayMs, 0, 3_600_000);
  const maxDelayMs = integer(r.maxDelayMs, `${path}.maxDelayMs`, Math.max(base.maxDelayMs, initialDelayMs), 0, 3_600_000);
  if (maxDelayMs < initialDelayMs) throw new ConfigError(`${path}.maxDelayMs`, `${maxDelayMs} is below initialDelayMs ${initialDelayMs}`);
  return { initialDelayMs, maxDelayMs, maxRestarts: integer(r.maxRestarts, `${path}.maxRestarts`, base.maxRestarts, 0, 1000) };
}

function supervision(value: Json, path: string, base: Supervision): Supervision {
  const watchdogMs = integer(value.watchdogMs, at(path, 'watchdogMs'), base.watchdogMs, 1, 3_600_000);
  const heartbeatMs = integer(value.heartbeatMs, at(path, 'heartbeatMs'), Math.min(base.heartbeatMs, watchdogMs), 1, 60_000);
  if (heartbeatMs > watchdogMs) throw new ConfigError(at(path, 'heartbeatMs'), `${heartbeatMs} is above watchdogMs ${watchdogMs}`, { fix: 'beat at least once per watchdog period' });
  return {
    watchdogMs,
    heartbeatMs,
    heapLimitMb: integer(value.heapLimitMb, at(path, 'heapLimitMb'), base.heapLimitMb, 16, 65_536),
    attachTimeoutMs: integer(value.attachTimeoutMs, at(path, 'attachTimeoutMs'), base.attachTimeoutMs, 1, 3_600_000),
    restart: restartPolicy(value.restart, at(path, 'restart'), base.restart),
  };
}

function driverChoice(entry: Json, path: string, registry: DriverRegistry): DriverChoice {
  if (entry.driver === undefined) {
    if (entry.options !== undefined) object(entry.options, `${path}.options`);
    return { kind: 'match', options: entry.options };
  }
  if (typeof entry.driver !== 'string') throw new ConfigError(`${path}.driver`, `expected a driver name, got ${describe(entry.driver)}`);
  const driver = registry.get(entry.driver);
  if (driver === undefined) {
    throw new ConfigError(`${path}.driver`, `unknown driver ${JSON.stringify(entry.driver)}`, { fix: `known drivers: ${[...registry.keys()].join(', ')}` });
  }
  return { kind: 'named', driver, options: validateOptions(driver.options, entry.options, `${path}.options`) };
}

function entryAddress(value: unknown, path: string): PciAddress {
  if (typeof value !== 'string') {
    throw new ConfigError(`${path}.address`, `expected a PCI address string, got ${describe(value)}`, { fix: 'name the device by "address", or by "match" (vendor, device, class...)' });
  }
  try {
    return parsePciAddress(value);
  } catch (e) {
    throw new ConfigError(`${path}.address`, `${JSON.stringify(value)} is not a PCI address`, { fix: 'write it as DDDD:BB:SS.F, e.g. 0000:00:04.0', cause: e });
  }
}

/** A 16-bit id written as lspci prints it ("1b36"), with or without 0x. */
function hexId(value: unknown, path: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !/^(0x)?[0-9a-f]{4}$/i.test(value)) throw new ConfigError(path, `expected 4 hex digits such as "1b36", got ${describe(value)}`);
  return parseInt(value.replace(/^0x/i, ''), 16);
}

function parseMatch(value: unknown, path: string): EntryMatch {
  const m = object(value, path);
  onlyKeys(m, path, ['vendor', 'device', 'class', 'subsystemVendor', 'subsystemDevice', 'slot']);
  if (m.class !== undefined && (typeof m.class !== 'string' || !/^(0x)?([0-9a-f]{2}){1,3}$/i.test(m.class))) {
    throw new ConfigError(`${path}.class`, `expected 2, 4 or 6 hex digits (class, subclass, programming interface) such as "0108", got ${describe(m.class)}`);
  }
  if (m.slot !== undefined && (typeof m.slot !== 'string' || !/^[A-Za-z0-9_.-]{1,32}$/.test(m.slot))) {
    throw new ConfigError(`${path}.slot`, `expected a slot name as /sys/bus/pci/slots lists it, got ${describe(m.slot)}`);
  }
  const match: EntryMatch = {
    ...(m.vendor === undefined ? {} : { vendor: hexId(m.vendor, `${path}.vendor`) }),
    ...(m.device === undefined ? {} : { device: hexId(m.device, `${path}.device`) }),
    ...(m.class === undefined ? {} : { classPrefix: (m.class as string).replace(/^0x/i, '').toLowerCase() }),
    ...(m.subsystemVendor === undefined ? {} : { subsystemVendor: hexId(m.subsystemVendor, `${path}.subsystemVendor`) }),
    ...(m.subsystemDevice === undefined ? {} : { subsystemDevice: hexId(m.subsystemDevice, `${path}.subsystemDevice`) }),
    ...(m.slot === undefined ? {} : { slot: m.slot as string }),
  };
  // A match of nothing would claim every device bound to vfio-pci, someone else's included.
  if (match.vendor === undefined && match.classPrefix === undefined && match.slot === undefined) {
    throw new ConfigError(path, 'matches every device', { fix: 'give at least "vendor", "class" or "slot"' });
  }
  return match;
}

/** Validates a parsed config file against the drivers in `registry`. */
export function parseHostConfig(value: unknown, registry: DriverRegistry): HostConfig {
  const root = object(value, '(config)');
  onlyKeys(root, '', ['devices', 'exports', 'watchdogMs', 'heartbeatMs', 'heapLimitMb', 'attachTimeoutMs', 'restart', 'statsIntervalMs', 'shutdownTimeoutMs']);
  const defaults = supervision(root, '', DEFAULT_SUPERVISION);
  if (!Array.isArray(root.devices)) throw new ConfigError('devices', `expected an array of devices, got ${describe(root.devices)}`);
  if (root.devices.length === 0) throw new ConfigError('devices', 'is empty', { fix: 'list at least one { "address": ..., "driver": ... }' });
  const seen = new Map<PciAddress, string>();
  const names = new Map<string, string>();
  const devices = root.devices.map((raw, i): DeviceEntry => {
    const path = `devices[${i}]`;
    const entry = object(raw, path);
    onlyKeys(entry, path, ['address', 'match', 'bind', 'name', 'driver', 'options', 'watchdogMs', 'heartbeatMs', 'heapLimitMb', 'attachTimeoutMs', 'restart']);
    if (entry.name !== undefined && (typeof entry.name !== 'string' || !/^[A-Za-z][A-Za-z0-9_-]{0,31}$/.test(entry.name))) {
      throw new ConfigError(`${path}.name`, `expected a name of letters, digits, '-' and '_' starting with a letter, got ${describe(entry.name)}`, { fix: 'e.g. "nvme0"' });
    }
    if (entry.bind !== undefined && typeof entry.bind !== 'boolean') throw new ConfigError(`${path}.bind`, `expected true or false, got ${describe(entry.bind)}`);
    const common = { path, choice: driverChoice(entry, path, registry), supervision: supervision(entry, path, defaults), bind: entry.bind === true };
    let parsed: DeviceEntry;
    if (entry.match !== undefined) {
      if (entry.address !== undefined) throw new ConfigError(`${path}.match`, 'an entry names its device by "address" or by "match", not both', { fix: 'remove one of the two' });
      parsed = { ...common, match: parseMatch(entry.match, `${path}.match`), name: entry.name as string | undefined };
    } else {
      const address = entryAddress(entry.address, path);
      const earlier = seen.get(address);
      if (earlier !== undefined) throw new ConfigError(`${path}.address`, `${address} is already bound by ${earlier}`, { fix: 'list each device once' });
      seen.set(address, path);
      parsed = { ...common, address, name: (entry.name as string | undefined) ?? address };
    }
    if (parsed.name !== undefined) {
      const clash = names.get(parsed.name);
      if (clash !== undefined) throw new ConfigError(`${path}.name`, `${JSON.stringify(parsed.name)} is already the name of ${clash}`, { fix: 'give each device its own name' });
      names.set(parsed.name, path);
    }
    return parsed;
  });
  return {
    devices,
    // Exports name their provider before the host runs: only entries that name a device by address can provide one.
    exports: parseExports(root.exports, devices.filter((d): d is AddressEntry => d.address !== undefined)),
    statsIntervalMs: integer(root.statsIntervalMs, 'statsIntervalMs', 1000, 50, 3_600_000),
    shutdownTimeoutMs: integer(root.shutdownTimeoutMs, 'shutdownTimeoutMs', 5000, 100, 600_000),
  };
}

/**
 * JSON with line (//) and block comments (JSONC, as the README example is written):
 * each comment becomes spaces, outside strings only, so that JSON.parse's
 * positions still point into the file as written.
 */
export function parseJsonWithComments(text: string): unknown {
  let out = '';
  for (let i = 0; i < text.length; ) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"' && text[j] !== '\n') j += text[j] === '\\' ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
    } else if (c === '/' && (text[i + 1] === '/' || text[i + 1] === '*')) {
      const block = text[i + 1] === '*';
      const close = block ? text.indexOf('*/', i + 2) : text.indexOf('\n', i);
      const end = close < 0 ? text.length : block ? close + 2 : close;
      out += text.slice(i, end).replace(/[^\n]/g, ' ');
      i = end;
    } else {
      out += c;
      i++;
    }
  }
  return JSON.parse(out);
}

/** Reads and validates a config file (JSON; comments allowed). */
export function loadHostConfig(file: string, registry: DriverRegistry): HostConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, `cannot be read (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { cause: e });
  }
  let value: unknown;
  try {
    value = parseJsonWithComments(text);
  } catch (e) {
    throw new ConfigError(file, `is not JSON: ${(e as Error).message}`, { cause: e });
  }
  return parseHostConfig(value, registry);
}
