/**
 * The config's "exports": what the host gives the OS of its drivers'
 * services. Each is opened when its provider attaches and kept across the
 * provider's restarts (actors/exports.ts).
 *
 *   "exports": [
 *     { "ublk": "nvme0n1", "id": 0, "queueDepth": 64 },                           // a block device as /dev/ublkbN (Linux >= 6.0, ublk_drv; id and queueDepth optional)
 *     { "nbd": "nvme0n1", "socket": "/run/upci/nvme0n1.sock", "mode": "0600" },  // a block device over NBD (mode: default "0600")
 *     { "tap": "nic0", "ifname": "upci0" }                                        // a NIC's packet port as a TAP interface
 *   ]
 *
 * An entry's kind is its one kind key, whose value names the service it
 * exports: a block device ("<device name><suffix>": nvme0 gives nvme0n1,
 * nvme0n2...) or a NIC (its device entry's name). A new kind is one more
 * entry of EXPORT_KINDS and one more variant of ExportEntry; the compiler
 * then asks actors/exports.ts for its opener.
 */
import { isAbsolute } from 'node:path';
import type { PciAddress } from '../kernel/pci-address.js';
import { INTERFACE_NAME_FIX, interfaceNameProblem } from '../kernel/linux/interface-name.js';
import { UBLK_MAX_QUEUE_DEPTH } from '../kernel/linux/ublk-abi.js';
import { ConfigError, describe } from './config-error.js';
import { object, onlyKeys, type Json } from './config-schema.js';

interface Exported {
  /** Where the entry is in the file, e.g. `exports[1]`, for later errors and events. */
  readonly path: string;
  /** The service exported (a block device's or a NIC's name). */
  readonly service: string;
  /** The device whose driver provides it. */
  readonly address: PciAddress;
}

/** A block device served to the kernel's nbd client on a unix socket. */
export interface NbdExportEntry extends Exported {
  readonly kind: 'nbd';
  readonly socket: string;
  /** The socket file's permission bits (who may connect). */
  readonly mode: number;
}

/** A block device as the kernel's /dev/ublkbN (ublk_drv). */
export interface UblkExportEntry extends Exported {
  readonly kind: 'ublk';
  /** The N of /dev/ublkbN, or undefined: the kernel picks. */
  readonly id: number | undefined;
  readonly queueDepth: number;
}

/** A NIC's packet port as a TAP interface of the kernel's network stack. */
export interface TapExportEntry extends Exported {
  readonly kind: 'tap';
  readonly ifname: string;
}

export type ExportEntry = UblkExportEntry | NbdExportEntry | TapExportEntry;
export type ExportKindName = ExportEntry['kind'];

/** A device entry, as exports see it. */
export interface NamedDevice {
  readonly path: string;
  readonly name: string;
  readonly address: PciAddress;
}

/** How one kind's entry is checked. */
interface ExportKind {
  /** Its keys besides the kind key. */
  readonly keys: readonly string[];
  /** What the kind key's value names, for messages ("a block device"). */
  readonly noun: string;
  /** How the services of this kind are named, for the fix when none fits. */
  readonly naming: string;
  /** The device that provides the service `name`, if any. */
  provider(name: string, devices: readonly NamedDevice[]): NamedDevice | undefined;
  /** The rest of the entry, checked. */
  parse(entry: Json, path: string, exported: Exported): ExportEntry;
  /** What no two exports may share (a socket path, an interface...): key of the entry, and the value. */
  exclusive(entry: ExportEntry): readonly (readonly [key: string, value: string])[];
}

/** sockaddr_un's sun_path, its NUL included. */
const SUN_PATH = 108;

function socketPath(value: unknown, path: string): string {
  if (typeof value !== 'string') throw new ConfigError(path, `expected a socket path, got ${describe(value)}`, { fix: 'e.g. "/run/upci/nvme0n1.sock"' });
  if (!isAbsolute(value)) throw new ConfigError(path, `${JSON.stringify(value)} is not an absolute path`, { fix: 'write the whole path, e.g. "/run/upci/nvme0n1.sock"' });
  if (Buffer.byteLength(value) >= SUN_PATH || value.includes('\0')) {
    throw new ConfigError(path, `${JSON.stringify(value)} does not fit a unix socket address (${SUN_PATH - 1} bytes at most)`, { fix: 'use a shorter path' });
  }
  return value;
}

function fileMode(value: unknown, path: string): number {
  if (value === undefined) return 0o600;
  if (typeof value !== 'string' || !/^0?[0-7]{3}$/.test(value)) {
    throw new ConfigError(path, `expected an octal mode string, got ${describe(value)}`, { fix: 'e.g. "0600" (owner only) or "0660" (owner and group)' });
  }
  return parseInt(value, 8);
}

/** A whole number in [min, max], or `fallback` when not given. */
function count(value: unknown, path: string, fallback: number | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(path, `expected a whole number from ${min} to ${max}, got ${describe(value)}`, { fix: fallback === undefined ? 'leave it out for the default' : `leave it out for ${fallback}` });
  }
  return value;
}

const BLOCK_NAMING = 'a block device is named after its device entry\'s "name" (nvme0 provides nvme0n1, nvme0n2...)';

/** The device that provides a block device: the longest device name it starts with ("nvme0n1" is nvme0's even when another device is named "nvme"). */
const blockProvider = (name: string, devices: readonly NamedDevice[]) => devices
  .filter((d) => name.length > d.name.length && name.startsWith(d.name))
  .sort((a, b) => b.name.length - a.name.length)[0];

/** The highest /dev/ublkbN number (ublk_drv's UBLK_MAX_UBLKS: minors of its char device region). */
const UBLK_MAX_ID = (1 << 20) - 1;

/** The kinds an export may be, by their kind key. */
const EXPORT_KINDS: Record<ExportKindName, ExportKind> = {
  ublk: {
    keys: ['id', 'queueDepth'],
    noun: 'a block device',
    naming: BLOCK_NAMING,
    provider: blockProvider,
    parse: (entry, path, exported) => ({
      kind: 'ublk', ...exported,
      id: count(entry.id, `${path}.id`, undefined, 0, UBLK_MAX_ID),
      queueDepth: count(entry.queueDepth, `${path}.queueDepth`, 64, 1, UBLK_MAX_QUEUE_DEPTH)!,
    }),
    // The kernel has one /dev/ublkbN per number; an export of a block device is one disk.
    exclusive: (e) => [['ublk', e.service], ...((e as UblkExportEntry).id === undefined ? [] : [['id', String((e as UblkExportEntry).id)] as const])],
  },
  nbd: {
    keys: ['socket', 'mode'],
    noun: 'a block device',
    naming: BLOCK_NAMING,
    provider: blockProvider,
    parse: (entry, path, exported) => ({
      kind: 'nbd', ...exported, socket: socketPath(entry.socket, `${path}.socket`), mode: fileMode(entry.mode, `${path}.mode`),
    }),
    exclusive: (e) => [['socket', (e as NbdExportEntry).socket]],
  },
  tap: {
    keys: ['ifname'],
    noun: 'a NIC',
    naming: 'a NIC is named by its device entry\'s "name" (default: its address)',
    provider: (name, devices) => devices.find((d) => d.name === name),
    parse: (entry, path, exported) => {
      const { ifname } = entry;
      if (typeof ifname !== 'string') throw new ConfigError(`${path}.ifname`, `expected an interface name, got ${describe(ifname)}`, { fix: 'e.g. "upci0"' });
      const problem = interfaceNameProblem(ifname);
      if (problem !== undefined) throw new ConfigError(`${path}.ifname`, problem, { fix: INTERFACE_NAME_FIX });
      return { kind: 'tap', ...exported, ifname };
    },
    // A packet port has one consumer at a time.
    exclusive: (e) => [['tap', e.service], ['ifname', (e as TapExportEntry).ifname]],
  },
};

const KINDS = Object.keys(EXPORT_KINDS) as ExportKindName[];

/** Validates the config's "exports" against its devices; none given is no exports. */
export function parseExports(value: unknown, devices: readonly NamedDevice[]): ExportEntry[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new ConfigError('exports', `expected an array of exports, got ${describe(value)}`, { fix: 'e.g. [{ "nbd": "nvme0n1", "socket": "/run/upci/nvme0n1.sock" }]' });
  const taken = new Map<string, string>();
  return value.map((raw, i): ExportEntry => {
    const path = `exports[${i}]`;
    const entry = object(raw, path);
    const kinds = KINDS.filter((k) => k in entry);
    if (kinds.length === 0) {
      throw new ConfigError(path, 'names no export kind', { fix: `give one of ${KINDS.map((k) => `"${k}"`).join(', ')} with the service to export, e.g. { "nbd": "nvme0n1", "socket": "/run/upci/nvme0n1.sock" }` });
    }
    if (kinds.length > 1) throw new ConfigError(`${path}.${kinds[1]}`, `a second export kind (this entry's kind is ${kinds[0]})`, { fix: 'one kind per entry: make another entry' });
    const kind = kinds[0]!;
    const spec = EXPORT_KINDS[kind];
    onlyKeys(entry, path, [kind, ...spec.keys]);
    const service = entry[kind];
    if (typeof service !== 'string' || service === '') throw new ConfigError(`${path}.${kind}`, `expected the name of ${spec.noun}, got ${describe(service)}`, { fix: spec.naming });
    const provider = spec.provider(service, devices);
    if (provider === undefined) {
      throw new ConfigError(`${path}.${kind}`, `${JSON.stringify(service)} is not ${spec.noun} of this config`, {
        fix: `${spec.naming}; the devices here are named ${devices.map((d) => `${d.name} (${d.path})`).join(', ')}`,
      });
    }
    const parsed = spec.parse(entry, path, { path, service, address: provider.address });
    for (const [key, v] of spec.exclusive(parsed)) {
      const earlier = taken.get(`${key}=${v}`);
      if (earlier !== undefined) throw new ConfigError(`${path}.${key}`, `${JSON.stringify(v)} is already exported by ${earlier}`, { fix: 'export each once' });
      taken.set(`${key}=${v}`, path);
    }
    return parsed;
  });
}
