/**
 * The reconciler's plan (actors/reconcile.ts): the config's entries against the devices present and those held.
 * Which entry wants which device, and the steps from the held set to the wanted one: claims, binds, releases and
 * restarts, and what is left alone (withdrawn by the kernel, failed for the same entry).
 */
import test from 'ava';
import { setup } from 'xstate';
import { parseHostConfig, type DeviceEntry } from '../../actors/config.js';
import { assign, entryIdentity, plan, type HeldDevice } from '../../actors/reconcile.js';
import { defineDriver } from '../../drivers/contract.js';
import type { PciAddress } from '../../kernel/pci-address.js';
import type { PresentDevice } from '../../pci/device-watcher.js';

const driver = defineDriver({
  name: 'plan-test',
  description: 'reconcile unit-test driver',
  match: [{ vendor: 0x1234 }],
  options: { rate: { type: 'integer', min: 1, default: 10, doc: 'a rate' } } as const,
  attach: () => ({}),
  machine: setup({}).createMachine({}),
});
const registry = new Map([[driver.name, driver]]);

const entries = (devices: unknown[]): readonly DeviceEntry[] => parseHostConfig({ devices }, registry).devices;

const A = '0000:00:04.0' as PciAddress;
const B = '0000:00:05.0' as PciAddress;
const C = '0000:03:00.0' as PciAddress;
const D = '0000:04:00.0' as PciAddress;

const dev = (address: PciAddress, fields: Partial<PresentDevice> = {}): PresentDevice => ({
  address, vendor: 0x1234, device: 0x11e8, classCode: 0x00ff00, subsystemVendor: 0x1af4, subsystemDevice: 0x1100, driver: 'vfio-pci', slot: undefined, ...fields,
});

const held = (pairs: [PciAddress, DeviceEntry][]): Map<PciAddress, HeldDevice> => new Map(pairs.map(([address, e]) => [address, { address, identity: entryIdentity(e) }]));

const wantedBy = (wanted: Map<PciAddress, DeviceEntry>) => Object.fromEntries([...wanted].map(([a, e]) => [a, e.path]));

test('which entry wants a device: its address entry first, then the first match entry it fits; every fit for an unnamed match, one for a named', (t) => {
  const es = entries([
    { match: { vendor: '1234', device: '11e8' }, driver: 'plan-test' },
    { address: A, driver: 'plan-test' },
    { match: { vendor: '1234' }, name: 'one', driver: 'plan-test' },
  ]);
  const present = [dev(A), dev(B), dev(C, { device: 0x0001 }), dev(D, { device: 0x0002 })];
  t.deepEqual(wantedBy(assign(es, present, new Map())), { [A]: 'devices[1]', [B]: 'devices[0]', [C]: 'devices[2]' }, 'the named match takes the lowest address that fits');
  // The named entry keeps the device it holds, even when a lower address fits now.
  t.deepEqual(wantedBy(assign(es, present, held([[D, es[2]!]]))), { [A]: 'devices[1]', [B]: 'devices[0]', [D]: 'devices[2]' });
});

test('a match fits on each field given: vendor, device, class prefix, subsystem ids, physical slot', (t) => {
  const fits = (match: unknown, d: PresentDevice) => assign(entries([{ match, driver: 'plan-test' }]), [d], new Map()).size === 1;
  t.true(fits({ class: '0108' }, dev(A, { classCode: 0x010802 })));
  t.true(fits({ class: '010802' }, dev(A, { classCode: 0x010802 })));
  t.false(fits({ class: '0106' }, dev(A, { classCode: 0x010802 })));
  t.true(fits({ class: '00' }, dev(A, { classCode: 0x00ff00 })), 'class 00 is the leading byte, kept by the padding');
  t.true(fits({ vendor: '1234', subsystemVendor: '1af4', subsystemDevice: '1100' }, dev(A)));
  t.false(fits({ vendor: '1234', subsystemDevice: '1101' }, dev(A)));
  t.true(fits({ slot: '21' }, dev(A, { slot: '21' })));
  t.false(fits({ slot: '21' }, dev(A, { slot: '22' })));
  t.false(fits({ slot: '21' }, dev(A)), 'a device in no slot fits no slot match');
  t.false(fits({ vendor: '8086' }, dev(A)));
});

test('from nothing held: claim what is bound to vfio-pci, bind what the entry may, say what it may not; leave withdrawn and failed devices alone', (t) => {
  const es = entries([
    { match: { vendor: '1234', device: '11e8' }, driver: 'plan-test', bind: true },
    { match: { vendor: '1234', device: '0001' }, driver: 'plan-test' },
  ]);
  const present = [dev(A), dev(B, { driver: undefined }), dev(C, { device: 0x0001, driver: 'nvme' }), dev(D, { vendor: 0x8086 })];
  t.deepEqual(plan(es, present, new Map(), new Set(), new Map()).map((s) => [s.kind, s.address]), [['claim', A], ['bind', B], ['unbound', C]]);
  // A withdrawn device (the kernel took it back) is not claimed nor bound; a failed one not tried again for the same entry.
  t.deepEqual(plan(es, present, new Map(), new Set([A]), new Map([[B, entryIdentity(es[0]!)]])).map((s) => [s.kind, s.address]), [['unbound', C]]);
  // ...but tried again for a changed entry.
  const changed = entries([{ match: { vendor: '1234', device: '11e8' }, driver: 'plan-test', bind: true, options: { rate: 5 } }]);
  t.deepEqual(plan(changed, present, new Map(), new Set(), new Map([[B, entryIdentity(es[0]!)]])).map((s) => [s.kind, s.address]), [['claim', A], ['bind', B]]);
});

test('a reload: an added entry claimed, a removed one released, a changed one restarted, an unchanged one untouched', (t) => {
  const before = entries([
    { address: A, driver: 'plan-test' },
    { address: B, driver: 'plan-test' },
    { address: C, driver: 'plan-test', options: { rate: 1 } },
  ]);
  // B removed, C changed, D added; A moved to the end of the file (its place does not matter).
  const after = entries([
    { address: C, driver: 'plan-test', options: { rate: 2 } },
    { address: D, driver: 'plan-test' },
    { address: A, driver: 'plan-test' },
  ]);
  const present = [dev(A), dev(B), dev(C), dev(D)];
  const holding = held([[A, before[0]!], [B, before[1]!], [C, before[2]!]]);
  t.deepEqual(plan(before, present, holding, new Set(), new Map()), [], 'the same config: nothing to do');
  t.deepEqual(plan(after, present, holding, new Set(), new Map()).map((s) => [s.kind, s.address, 'entry' in s ? s.entry.path : '']), [
    ['release', B, ''],
    ['restart', C, 'devices[0]'],
    ['claim', D, 'devices[1]'],
  ]);
});

test('a held device the watcher no longer lists is left to the device request, unless no entry wants it any more', (t) => {
  const es = entries([{ address: A, driver: 'plan-test' }]);
  const holding = held([[A, es[0]!]]);
  t.deepEqual(plan(es, [], holding, new Set(), new Map()), []);
  t.deepEqual(plan(entries([{ address: B, driver: 'plan-test' }]), [], holding, new Set(), new Map()).map((s) => [s.kind, s.address]), [['release', A]]);
});

test('a device an address entry takes from a match entry is restarted for it', (t) => {
  const match = entries([{ match: { vendor: '1234' }, driver: 'plan-test' }]);
  const both = entries([{ match: { vendor: '1234' }, driver: 'plan-test' }, { address: A, driver: 'plan-test', options: { rate: 3 } }]);
  t.deepEqual(plan(both, [dev(A)], held([[A, match[0]!]]), new Set(), new Map()).map((s) => [s.kind, s.address, 'entry' in s ? s.entry.path : '']), [['restart', A, 'devices[1]']]);
});

test('match entries in the config: each problem one error naming its key', (t) => {
  const bad = (entry: unknown) => t.throws(() => entries([entry]))?.message.split('\n')[0];
  t.is(bad({ match: { vendor: '1234' }, address: A }), 'devices[0].match: an entry names its device by "address" or by "match", not both');
  t.is(bad({ match: { device: '11e8' } }), 'devices[0].match: matches every device');
  t.is(bad({ match: { vendor: 0x1234 } }), 'devices[0].match.vendor: expected 4 hex digits such as "1b36", got 4660');
  t.is(bad({ match: { class: '1' } }), 'devices[0].match.class: expected 2, 4 or 6 hex digits (class, subclass, programming interface) such as "0108", got "1"');
  t.is(bad({ match: { vendor: '1234', bus: 3 } }), 'devices[0].match.bus: unknown key');
  t.is(bad({ match: { slot: 'a b' } }), 'devices[0].match.slot: expected a slot name as /sys/bus/pci/slots lists it, got "a b"');
  t.is(bad({ match: { vendor: '1234' }, bind: 'yes' }), 'devices[0].bind: expected true or false, got "yes"');
  t.is(bad({ driver: 'plan-test' }), 'devices[0].address: expected a PCI address string, got nothing');
  const [m] = entries([{ match: { vendor: '0x1B36', device: '0010', class: '0108', slot: '21' }, bind: true, name: 'hp0' }]);
  t.like(m, { match: { vendor: 0x1b36, device: 0x0010, classPrefix: '0108', slot: '21' }, bind: true, name: 'hp0', address: undefined });
  t.throws(() => entries([{ match: { vendor: '1234' }, name: 'x' }, { address: A, name: 'x' }]), { message: /devices\[1\]\.name: "x" is already the name of devices\[0\]/ });
});
