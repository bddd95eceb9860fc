/**
 * A driver thread compiles only its own driver: the worker body's static
 * imports reach no driver module (drivers/index.ts, the main thread's
 * registry of every built-in, least of all; the kit's timers, which the bus
 * owns, are no driver), and a built-in driver is imported from its own file.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { builtinModuleFile, importDriver } from '../../workers/driver-import.js';
import { builtinDrivers } from '../../drivers/index.js';

const DIST = join(dirname(fileURLToPath(import.meta.url)), '../..');

/** Every module the file's static imports and re-exports reach, relative to dist/. */
function reached(file: string, seen = new Set<string>()): Set<string> {
  if (seen.has(file)) return seen;
  seen.add(file);
  for (const m of readFileSync(join(DIST, file), 'utf8').matchAll(/^\s*(?:import|export)\s[^;]*?from\s*'(\.{1,2}\/[^']+)'/gm)) {
    reached(normalize(join(dirname(file), m[1]!)), seen);
  }
  return seen;
}

test('the driver thread\'s body statically reaches the block and packet contracts of drivers/ and the kit\'s timers (the bus owns them), no driver', (t) => {
  const drivers = [...reached('workers/driver-thread-body.js')].filter((f) => f.startsWith('drivers/')).sort();
  t.deepEqual(drivers, ['drivers/block.js', 'drivers/kit/timers.js', 'drivers/packet.js']);
});

test('each built-in driver is imported from its own module, by name', async (t) => {
  for (const [name, driver] of builtinDrivers) {
    const file = builtinModuleFile(name);
    t.truthy(file, `${name} has a module of its own`);
    t.true(relative(DIST, file!).startsWith('drivers/'), file);
    t.is(await importDriver({ kind: 'builtin', name }), driver, `${name} from ${relative(DIST, file!)}`);
  }
  await t.throwsAsync(importDriver({ kind: 'builtin', name: 'no-such-driver' }), { message: 'no built-in driver "no-such-driver"' });
});
