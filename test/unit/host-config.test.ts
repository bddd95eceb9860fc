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
  t.is(err.message, 'devices[0].driver: unknown driver "e1000"\n  fix: known drivers: edu, pci-testdev, nvme, e1000e, virtio-blk, virtio-net');
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

const nvme = { address: '0000:00:07.0', name: 'nvme0', driver: 'nvme' };
const nic = { address: '0000:00:08.0', name: 'nic0', driver: 'e1000e' };

test('exports: an nbd and a tap export, each with the device that provides it; no exports is none', (t) => {
  const config = parse({
    devices: [nvme, nic, { address: '0000:00:0a.0', name: 'nvme', driver: 'nvme' }],
    exports: [{ nbd: 'nvme0n2', socket: '/run/upci/nvme0n2.sock' }, { nbd: 'nvmen1', socket: '/run/upci/b.sock', mode: '0660' }, { tap: 'nic0', ifname: 'upci0' }],
  });
  t.deepEqual(config.exports, [
    // nvme0n2 starts with both "nvme" and "nvme0": the longer name is its device.
    { kind: 'nbd', path: 'exports[0]', service: 'nvme0n2', address: '0000:00:07.0', socket: '/run/upci/nvme0n2.sock', mode: 0o600 },
    { kind: 'nbd', path: 'exports[1]', service: 'nvmen1', address: '0000:00:0a.0', socket: '/run/upci/b.sock', mode: 0o660 },
    { kind: 'tap', path: 'exports[2]', service: 'nic0', address: '0000:00:08.0', ifname: 'upci0' },
  ]);
  t.deepEqual(parse({ devices: [nvme] }).exports, []);
  // A device without a name is named by its address.
  t.like(parse({ devices: [{ address: '0000:00:08.0', driver: 'e1000e' }], exports: [{ tap: '0000:00:08.0', ifname: 'upci1' }] }).exports[0], { address: '0000:00:08.0' });
});

test('exports: each bad entry is one error naming its key', (t) => {
  const bad = (exports: unknown, message: string) => rejects(t, { devices: [nvme, nic], exports }, message);
  bad({ nbd: 'nvme0n1' }, 'exports: expected an array of exports, got an object');
  bad([5], 'exports[0]: expected an object, got 5');
  bad([{ socket: '/run/a.sock' }], 'exports[0]: names no export kind');
  bad([{ nbd: 'nvme0n1', tap: 'nic0', socket: '/run/a.sock' }], 'exports[0].tap: a second export kind (this entry\'s kind is nbd)');
  bad([{ nbd: 'nvme0n1', socket: '/run/a.sock', ifname: 'x' }], 'exports[0].ifname: unknown key');
  bad([{ nbd: 7, socket: '/run/a.sock' }], 'exports[0].nbd: expected the name of a block device, got 7');
  bad([{ nbd: 'nvme1n1', socket: '/run/a.sock' }], 'exports[0].nbd: "nvme1n1" is not a block device of this config');
  bad([{ nbd: 'nvme0', socket: '/run/a.sock' }], 'exports[0].nbd: "nvme0" is not a block device of this config');
  bad([{ nbd: 'nvme0n1' }], 'exports[0].socket: expected a socket path, got nothing');
  bad([{ nbd: 'nvme0n1', socket: 'nvme0n1.sock' }], 'exports[0].socket: "nvme0n1.sock" is not an absolute path');
  bad([{ nbd: 'nvme0n1', socket: `/${'x'.repeat(107)}` }], `exports[0].socket: "/${'x'.repeat(107)}" does not fit a unix socket address (107 bytes at most)`);
  bad([{ nbd: 'nvme0n1', socket: '/run/a.sock', mode: 600 }], 'exports[0].mode: expected an octal mode string, got 600');
  bad([{ nbd: 'nvme0n1', socket: '/run/a.sock', mode: '0800' }], 'exports[0].mode: expected an octal mode string, got "0800"');
  bad([{ nbd: 'nvme0n1', socket: '/run/a.sock' }, { nbd: 'nvme0n2', socket: '/run/a.sock' }], 'exports[1].socket: "/run/a.sock" is already exported by exports[0]');
  bad([{ tap: 'nic1', ifname: 'upci0' }], 'exports[0].tap: "nic1" is not a NIC of this config');
  bad([{ tap: 'nic0' }], 'exports[0].ifname: expected an interface name, got nothing');
  bad([{ tap: 'nic0', ifname: 'a/b' }], 'exports[0].ifname: \'a/b\' is not an interface name');
  bad([{ tap: 'nic0', ifname: 'x'.repeat(16) }], `exports[0].ifname: '${'x'.repeat(16)}' is not an interface name`);
  bad([{ tap: 'nic0', ifname: 'upci0' }, { tap: 'nic0', ifname: 'upci1' }], 'exports[1].tap: "nic0" is already exported by exports[0]');
  bad([{ tap: 'nic0', ifname: 'upci0' }, { nbd: 'nvme0n1', socket: '/run/a.sock' }, { tap: 'nic0', ifname: 'upci0' }], 'exports[2].tap: "nic0" is already exported by exports[0]');
});

test('exports: a ublk export of a block device, its id and queue depth checked; one disk per block device and per id', (t) => {
  const config = parse({ devices: [nvme, nic], exports: [{ ublk: 'nvme0n1' }, { ublk: 'nvme0n2', id: 3, queueDepth: 128 }] });
  t.deepEqual(config.exports, [
    { kind: 'ublk', path: 'exports[0]', service: 'nvme0n1', address: '0000:00:07.0', id: undefined, queueDepth: 64 },
    { kind: 'ublk', path: 'exports[1]', service: 'nvme0n2', address: '0000:00:07.0', id: 3, queueDepth: 128 },
  ]);
  const bad = (exports: unknown, message: string) => rejects(t, { devices: [nvme, nic], exports }, message);
  bad([{ ublk: 'nic0' }], 'exports[0].ublk: "nic0" is not a block device of this config');
  bad([{ ublk: 'nvme0n1', queueDepth: 0 }], 'exports[0].queueDepth: expected a whole number from 1 to 4096, got 0');
  bad([{ ublk: 'nvme0n1', id: -1 }], 'exports[0].id: expected a whole number from 0 to 1048575, got -1');
  bad([{ ublk: 'nvme0n1', socket: '/run/a.sock' }], 'exports[0].socket: unknown key');
  bad([{ ublk: 'nvme0n1' }, { ublk: 'nvme0n1' }], 'exports[1].ublk: "nvme0n1" is already exported by exports[0]');
  bad([{ ublk: 'nvme0n1', id: 2 }, { ublk: 'nvme0n2', id: 2 }], 'exports[1].id: "2" is already exported by exports[0]');
});

test('exports: the fix names how services are named and the devices there are', (t) => {
  const err = t.throws(() => parse({ devices: [nvme, nic], exports: [{ nbd: 'sda', socket: '/run/a.sock' }] }), { instanceOf: ConfigError }) as ConfigError;
  t.is(err.path, 'exports[0].nbd');
  t.is(err.message.split('\n')[1], '  fix: a block device is named after its device entry\'s "name" (nvme0 provides nvme0n1, nvme0n2...); the devices here are named nvme0 (devices[0]), nic0 (devices[1])');
});
