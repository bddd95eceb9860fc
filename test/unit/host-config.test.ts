/** The host config schema: every bad config is one ConfigError naming the offending key. */
import test from 'ava';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../../actors/config-error.js';
import { loadHostConfig, parseHostConfig } from '../../actors/config.js';
import { builtinDrivers } from '../../drivers/index.js';

const parse = (value: unknown) => parseHostConfig(value, builtinDrivers);

function rejects(t: { throws: (fn: () => unknown, e: object) => unknown; is: (a: unknown, b: unknown) => void }, value: unknown, message: string): void {
  const err = t.throws(() => parse(value), { instanceOf: ConfigError }) as ConfigError;
  t.is(err.message.split('\n')[0], message);
}

const edu = { address: '0000:00:04.0', driver: 'edu' };

test('a valid config: defaults filled in, addresses canonical, options validated with their defaults', (t) => {
  const config = parse({ watchdogMs: 250, devices: [{ ...edu, options: { interrupt: 'intx', failAfterInterrupts: 3 } }, { address: '00:06.0', driver: 'pci-testdev', restart: { maxRestarts: 1 } }] });
  t.is(config.devices.length, 2);
  t.like(config.devices[0], { path: 'devices[0]', address: '0000:00:04.0', supervision: { watchdogMs: 250, restart: { initialDelayMs: 100, maxDelayMs: 5000, maxRestarts: 5 } } });
  t.like(config.devices[0]!.choice, { kind: 'named', options: { interrupt: 'intx', failAfterInterrupts: 3, raiseIntervalMs: 10, dmaCheck: true } });
  t.like(config.devices[1], { address: '0000:00:06.0', supervision: { watchdogMs: 250, restart: { maxRestarts: 1, initialDelayMs: 100 } } });
  t.like(config, { statsIntervalMs: 1000, shutdownTimeoutMs: 5000 });
});

test('the bench example config is valid', (t) => {
  const config = loadHostConfig('drivers/examples/bench.json', builtinDrivers);
  t.deepEqual(config.devices.map((d) => [d.address, d.choice.kind === 'named' ? d.choice.driver.name : '?']), [
    ['0000:00:04.0', 'edu'], ['0000:00:05.0', 'edu'], ['0000:00:06.0', 'pci-testdev'],
  ]);
});

test('wrong option type names the option', (t) => {
  rejects(t, { devices: [edu, { ...edu, address: '0000:00:05.0', options: { failAfterInterrupts: 'x' } }] }, 'devices[1].options.failAfterInterrupts: expected integer, got "x"');
  rejects(t, { devices: [{ ...edu, options: { interrupt: 'msix' } }] }, 'devices[0].options.interrupt: expected one of "msi", "intx", got "msix"');
  rejects(t, { devices: [{ ...edu, options: { dmaCheck: 1 } }] }, 'devices[0].options.dmaCheck: expected boolean, got 1');
  rejects(t, { devices: [{ ...edu, options: { raiseIntervalMs: -1 } }] }, 'devices[0].options.raiseIntervalMs: -1 is below the minimum 0');
  rejects(t, { devices: [{ ...edu, options: { failAfterInterrupts: 1.5 } }] }, 'devices[0].options.failAfterInterrupts: expected integer, got 1.5');
  rejects(t, { devices: [{ ...edu, options: { nope: 1 } }] }, 'devices[0].options.nope: unknown option');
  rejects(t, { devices: [{ ...edu, options: [] }] }, 'devices[0].options: expected an object, got an array');
});

test('unknown driver', (t) => {
  const err = t.throws(() => parse({ devices: [{ ...edu, driver: 'e1000' }] }), { instanceOf: ConfigError }) as ConfigError;
  t.is(err.message, 'devices[0].driver: unknown driver "e1000"\n  fix: known drivers: edu, pci-testdev, nvme, e1000e');
  t.is(err.path, 'devices[0].driver');
  t.is(err.code as string, 'BAD_CONFIG');
});

test('duplicate device, also when written differently', (t) => {
  rejects(t, { devices: [edu, { address: '00:04.0', driver: 'edu' }] }, 'devices[1].address: 0000:00:04.0 is already bound by devices[0]');
});

test('bad address, missing address, unknown keys, bad supervision values', (t) => {
  rejects(t, { devices: [{ ...edu, address: '0000:00:4.0' }] }, 'devices[0].address: "0000:00:4.0" is not a PCI address');
  rejects(t, { devices: [{ driver: 'edu' }] }, 'devices[0].address: expected a PCI address string, got nothing');
  rejects(t, { devices: [{ ...edu, drvier: 'edu' }] }, 'devices[0].drvier: unknown key');
  rejects(t, { devices: [edu], watchdog: 5 }, 'watchdog: unknown key');
  rejects(t, { devices: [edu], watchdogMs: '1s' }, 'watchdogMs: expected integer, got "1s"');
  rejects(t, { devices: [{ ...edu, restart: { maxRestarts: -1 } }] }, 'devices[0].restart.maxRestarts: -1 is outside 0..1000');
  rejects(t, { devices: [edu], restart: { initialDelayMs: 500, maxDelayMs: 100 } }, 'restart.maxDelayMs: 100 is below initialDelayMs 500');
  rejects(t, { devices: [edu], restart: { backoff: 2 } }, 'restart.backoff: unknown key');
});

test('devices missing, empty or not an array; the config not an object', (t) => {
  rejects(t, {}, 'devices: expected an array of devices, got nothing');
  rejects(t, { devices: [] }, 'devices: is empty');
  rejects(t, { devices: {} }, 'devices: expected an array of devices, got an object');
  rejects(t, [], '(config): expected an object, got an array');
  rejects(t, { devices: ['0000:00:04.0'] }, 'devices[0]: expected an object, got "0000:00:04.0"');
});

test('a file that is not JSON or cannot be read names the file', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-config-'));
  const file = join(dir, 'bad.json');
  writeFileSync(file, '{ "devices": [ }');
  t.regex(t.throws(() => loadHostConfig(file, builtinDrivers))!.message, new RegExp(`^${file}: is not JSON: `));
  t.regex(t.throws(() => loadHostConfig(join(dir, 'absent.json'), builtinDrivers))!.message, new RegExp(`^${join(dir, 'absent.json')}: cannot be read \\(ENOENT\\)`));
});
