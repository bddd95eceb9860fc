import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadHostConfig } from '../../actors/config.js';
import { withConfigDrivers } from '../../actors/driver-modules.js';
import { sourceOf } from '../../actors/driver-source.js';
import { builtinDrivers } from '../../drivers/index.js';

const fixture = fileURLToPath(new URL('../fixtures/outside-driver.js', import.meta.url));
const notADriver = fileURLToPath(new URL('../../kernel/pci-address.js', import.meta.url));

/** A config in a new folder whose second device's driver is `driver(folder)`. */
function configAt(driver: string | ((dir: string) => string)): string {
  const dir = mkdtempSync(join(tmpdir(), 'upci-drivers-'));
  const file = join(dir, 'config.json');
  const name = typeof driver === 'string' ? driver : driver(dir);
  writeFileSync(file, JSON.stringify({ devices: [{ address: '0000:00:04.0', driver: 'edu' }, { address: '0000:00:05.0', driver: name }] }));
  return file;
}

test('a driver module named by a path relative to the config file is loaded, checked with the config, and importable by a worker', async (t) => {
  const file = configAt((dir) => `./${relative(dir, fixture)}`);
  const registry = await withConfigDrivers(file, builtinDrivers);
  const config = loadHostConfig(file, registry);
  const choice = config.devices[1]!.choice;
  t.is(choice.kind, 'named');
  if (choice.kind !== 'named') return;
  t.is(choice.driver.name, 'outside-edu');
  t.deepEqual(sourceOf(choice.driver), { kind: 'module', url: new URL('../fixtures/outside-driver.js', import.meta.url).href });
  t.deepEqual(sourceOf(builtinDrivers.get('edu')!), { kind: 'builtin', name: 'edu' });
});

test('a module path that does not exist is one config error naming the key', async (t) => {
  const file = configAt('./nowhere/driver.js');
  const err = await t.throwsAsync(withConfigDrivers(file, builtinDrivers));
  t.regex(err!.message, /^devices\[1\]\.driver: no driver module at .*nowhere\/driver\.js/);
  t.is((err as { code?: string }).code, 'BAD_CONFIG');
});

test('a module that is not a driver, or a package that is not installed, is one config error naming the key', async (t) => {
  const file = configAt(notADriver);
  const err = await t.throwsAsync(withConfigDrivers(file, builtinDrivers));
  t.regex(err!.message, /^devices\[1\]\.driver: file:.*pci-address\.js is not a driver module: it exports no driver/);
  const missing = await t.throwsAsync(withConfigDrivers(configAt('upci-driver-that-is-not-installed'), builtinDrivers));
  t.regex(missing!.message, /^devices\[1\]\.driver: "upci-driver-that-is-not-installed" is neither a built-in driver nor an installed package/);
});
