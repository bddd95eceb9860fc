/**
 * Claiming: open every configured device and settle its driver, all or
 * nothing. A device that cannot be opened (not bound to vfio-pci, absent,
 * busy) or whose driver does not fit fails the whole config with an error
 * naming the entry, after the devices already opened are closed again.
 */
import { matches, type AnyDriver, type DriverRegistry, type OptionsOf, type OptionsSchema } from '../drivers/contract.js';
import { UpciError } from '../kernel/errors.js';
import type { PciAddress } from '../kernel/pci-address.js';
import { formatId, type ConfigHeader } from '../pci/config.js';
import type { PciDevice } from '../pci/device.js';
import type { DeviceEntry, HostConfig } from './config.js';
import { ConfigError } from './config-error.js';
import { validateOptions } from './options.js';

export interface Claim {
  readonly entry: DeviceEntry;
  readonly device: PciDevice;
  readonly driver: AnyDriver;
  readonly options: OptionsOf<OptionsSchema>;
}

const ids = (h: ConfigHeader) => `${formatId(h.vendor)}:${formatId(h.device)}`;

function open(entry: DeviceEntry, opener: (address: PciAddress) => PciDevice): PciDevice {
  try {
    return opener(entry.address);
  } catch (e) {
    if (!(e instanceof UpciError)) throw e;
    const [problem] = e.message.split('\n');
    throw new ConfigError(`${entry.path}.address`, `cannot claim ${entry.address}: ${problem}`, { code: e.code, fix: e.fix, cause: e });
  }
}

function settleDriver(entry: DeviceEntry, header: ConfigHeader, registry: DriverRegistry): Pick<Claim, 'driver' | 'options'> {
  const choice = entry.choice;
  if (choice.kind === 'named') {
    if (!matches(choice.driver.match, header)) {
      throw new ConfigError(`${entry.path}.driver`, `${JSON.stringify(choice.driver.name)} does not drive ${entry.address} (${ids(header)})`, {
        fix: `drivers for it: ${[...registry.values()].filter((d) => matches(d.match, header)).map((d) => d.name).join(', ') || 'none'}`,
      });
    }
    return choice;
  }
  const driver = [...registry.values()].find((d) => matches(d.match, header));
  if (driver === undefined) {
    throw new ConfigError(entry.path, `no driver matches ${entry.address} (${ids(header)})`, { fix: `known drivers: ${[...registry.keys()].join(', ')}` });
  }
  return { driver, options: validateOptions(driver.options, choice.options, `${entry.path}.options`) };
}

export function claimAll(config: HostConfig, registry: DriverRegistry, opener: (address: PciAddress) => PciDevice): Claim[] {
  const claims: Claim[] = [];
  try {
    for (const entry of config.devices) {
      const device = open(entry, opener);
      try {
        claims.push({ entry, device, ...settleDriver(entry, device.header(), registry) });
      } catch (e) {
        device.close();
        throw e;
      }
    }
    return claims;
  } catch (e) {
    for (const c of claims) c.device.close();
    throw e;
  }
}
