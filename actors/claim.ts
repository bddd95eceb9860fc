/**
 * Claiming: open a device and settle its driver. At start every entry that
 * names its device by address is claimed, all or nothing: a device that
 * cannot be opened (not bound to vfio-pci, absent, busy) or whose driver
 * does not fit fails the whole config with an error naming the entry, after
 * the devices already opened are closed again. Match entries' devices are
 * claimed one by one as the host sees them (actors/reconcile.ts).
 */
import { matches, type AnyDriver, type DriverRegistry, type OptionsOf, type OptionsSchema } from '../drivers/contract.js';
import { UpciError } from '../kernel/errors.js';
import type { PciAddress } from '../kernel/pci-address.js';
import { formatId, type ConfigHeader } from '../pci/config.js';
import type { PciDevice } from '../pci/device.js';
import type { AddressEntry, DeviceEntry, HostConfig } from './config.js';
import { ConfigError } from './config-error.js';
import { validateOptions } from './options.js';

export interface Claim {
  readonly entry: DeviceEntry;
  /** The device claimed: the entry's address, or the match's. */
  readonly address: PciAddress;
  /** What its services are named after: the entry's name, else the address. */
  readonly name: string;
  readonly device: PciDevice;
  readonly driver: AnyDriver;
  readonly options: OptionsOf<OptionsSchema>;
}

const ids = (h: ConfigHeader) => `${formatId(h.vendor)}:${formatId(h.device)}`;

/** Where a problem with claiming `entry`'s device is reported: its address key, or the entry as a whole for a match. */
const where = (entry: DeviceEntry) => (entry.address === undefined ? entry.path : `${entry.path}.address`);

function open(entry: DeviceEntry, address: PciAddress, opener: (address: PciAddress) => PciDevice): PciDevice {
  try {
    return opener(address);
  } catch (e) {
    if (!(e instanceof UpciError)) throw e;
    const [problem] = e.message.split('\n');
    throw new ConfigError(where(entry), `cannot claim ${address}: ${problem}`, { code: e.code, fix: e.fix, cause: e });
  }
}

function settleDriver(entry: DeviceEntry, address: PciAddress, header: ConfigHeader, registry: DriverRegistry): Pick<Claim, 'driver' | 'options'> {
  const choice = entry.choice;
  if (choice.kind === 'named') {
    if (!matches(choice.driver.match, header)) {
      throw new ConfigError(`${entry.path}.driver`, `${JSON.stringify(choice.driver.name)} does not drive ${address} (${ids(header)})`, {
        fix: `drivers for it: ${[...registry.values()].filter((d) => matches(d.match, header)).map((d) => d.name).join(', ') || 'none'}`,
      });
    }
    return choice;
  }
  const driver = [...registry.values()].find((d) => matches(d.match, header));
  if (driver === undefined) {
    throw new ConfigError(entry.path, `no driver matches ${address} (${ids(header)})`, { fix: `known drivers: ${[...registry.keys()].join(', ')}` });
  }
  return { driver, options: validateOptions(driver.options, choice.options, `${entry.path}.options`) };
}

/** Opens the device at `address` for `entry` and settles its driver; a ConfigError naming the entry leaves it closed. */
export function claimOne(entry: DeviceEntry, address: PciAddress, registry: DriverRegistry, opener: (address: PciAddress) => PciDevice): Claim {
  const device = open(entry, address, opener);
  try {
    return { entry, address, name: entry.name ?? address, device, ...settleDriver(entry, address, device.header(), registry) };
  } catch (e) {
    device.close();
    throw e;
  }
}

/** Claims every address entry of `config` (all or nothing); `beforeOpen` may first hand a device to vfio-pci (an entry's "bind"). */
export function claimAll(
  config: HostConfig,
  registry: DriverRegistry,
  opener: (address: PciAddress) => PciDevice,
  beforeOpen: (entry: AddressEntry) => void = () => {},
): Claim[] {
  const claims: Claim[] = [];
  try {
    for (const entry of config.devices) {
      if (entry.address === undefined) continue;
      beforeOpen(entry);
      claims.push(claimOne(entry, entry.address, registry, opener));
    }
    return claims;
  } catch (e) {
    for (const c of claims) c.device.close();
    throw e;
  }
}
