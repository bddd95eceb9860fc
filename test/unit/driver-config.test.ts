/**
 * DriverBus.config() on a fake function (issue 22, the kit's config-space
 * access): every capability read, standard, extended and vendor-specific;
 * writes applied where they are the driver's, and every register the host
 * or the kernel keeps refused with HOST_OWNED naming it, config space left
 * as it was.
 */
import test from 'ava';
import { AttachedBus } from '../../workers/driver-bus.js';
import { DeviceMeter } from '../../actors/meter.js';
import { UpciError } from '../../kernel/errors.js';
import { acceptingDma, fakeDevice, openFake } from '../support/fake-device.js';

const VENDOR_AT = 0x60;
const EXPRESS_AT = 0x70;

/** A PCIe function with MSI (0x40), MSI-X (0x4c), a vendor capability (0x60), a PCIe capability (0x70) and an extended vendor capability (0x100). */
function attachedFunction() {
  const fake = fakeDevice('0000:00:0c.0', { msi: 1, msix: 4 }, { dma: acceptingDma() }, Buffer.alloc(4096));
  const config = fake.config;
  config.writeUInt16LE(0x1af4, 0x00);
  config[0x4c + 1] = VENDOR_AT;
  config.set([0x09, EXPRESS_AT, 16, 0x01, 4, 0, 0, 0], VENDOR_AT);
  config.writeUInt32LE(0x3000, VENDOR_AT + 8);
  config.writeUInt32LE(0x1000, VENDOR_AT + 12);
  config.set([0x10, 0x00], EXPRESS_AT);
  config.writeUInt32LE(0x000b | (1 << 16), 0x100);
  config.writeUInt32LE(0x20, 0x10); // BAR0: 32-bit memory
  const device = openFake(fake);
  const hooks = { name: 'cfg', watchdogMs: 1000, services: { provide: () => () => {}, consume: () => Promise.reject(new Error('no services here')), release: () => {} }, meter: new DeviceMeter(), onStall: () => {}, onNote: () => {} };
  const bus = new AttachedBus(device, 0, hooks);
  return { bus, config, device };
}

test('every capability is listed and readable: MSI, MSI-X, vendor-specific, PCI Express and the extended list', (t) => {
  const { bus, device } = attachedFunction();
  const cfg = bus.config();
  t.deepEqual(cfg.capabilities().map((c) => [c.name, c.offset, c.extended]), [
    ['msi', 0x40, false], ['msi-x', 0x4c, false], ['vendor', VENDOR_AT, false], ['pci-express', EXPRESS_AT, false], ['vendor', 0x100, true],
  ]);
  const [vendor] = cfg.capabilitiesOf(0x09);
  t.is(vendor?.offset, VENDOR_AT);
  t.is(cfg.capabilitiesOf(0x0b, true)[0]?.offset, 0x100);
  t.is(cfg.read(1, VENDOR_AT + 3), 0x01, 'a vendor capability\'s own fields');
  t.is(cfg.read(4, VENDOR_AT + 8), 0x3000);
  t.is(cfg.read(2, 0x00), 0x1af4);
  t.is(cfg.size, 4096);
  device.close();
});

test('writes a driver may make reach the device: command bits other than bus master and INTx disable, status, latency timer, a vendor capability\'s body', (t) => {
  const { bus, config, device } = attachedFunction();
  const cfg = bus.config();
  cfg.write(2, 0x04, 0x0002);
  t.is(config.readUInt16LE(0x04), 0x0002, 'memory space enable');
  cfg.write(1, 0x0d, 0x40);
  t.is(config[0x0d], 0x40);
  cfg.write(4, VENDOR_AT + 8, 0x1234);
  t.is(config.readUInt32LE(VENDOR_AT + 8), 0x1234);
  cfg.write(4, 0x104, 0xabcd);
  t.is(config.readUInt32LE(0x104), 0xabcd, 'an extended capability\'s body');
  device.close();
});

const refusals: [string, 1 | 2 | 4, number, number, RegExp][] = [
  ['bus master on, 16-bit', 2, 0x04, 0x0006, /bus-master bit/],
  ['bus master on, 8-bit', 1, 0x04, 0x06, /bus-master bit/],
  ['bus master on, 32-bit with status', 4, 0x04, 0x0004, /bus-master bit/],
  ['INTx disable, high byte', 1, 0x05, 0x04, /INTx-disable bit/],
  ['BAR0', 4, 0x10, 0xfebf0000, /a BAR register/],
  ['BAR5', 4, 0x24, 0, /a BAR register/],
  ['the expansion ROM', 4, 0x30, 1, /expansion ROM/],
  ['the interrupt line', 1, 0x3c, 11, /interrupt line/],
  ['the vendor id', 2, 0x00, 0x8086, /header byte 0x0/],
  ['the capability pointer', 1, 0x34, 0x60, /header byte 0x34/],
  ['MSI message control', 2, 0x42, 1, /msi capability at 0x40/],
  ['MSI message address', 4, 0x44, 0xfee00000, /msi capability at 0x40/],
  ['MSI-X message control', 2, 0x4e, 0x8000, /msi-x capability at 0x4c/],
  ['MSI-X table offset', 4, 0x50, 0x2000, /msi-x capability at 0x4c/],
  ['a vendor capability\'s next pointer', 1, VENDOR_AT + 1, 0, /vendor capability's header/],
  ['an extended capability\'s header', 4, 0x100, 0, /vendor capability's header/],
];

for (const [what, width, offset, value, message] of refusals) {
  test(`refused with HOST_OWNED, config space unchanged: ${what}`, (t) => {
    const { bus, config, device } = attachedFunction();
    const before = Buffer.from(config);
    const e = t.throws(() => bus.config().write(width, offset, value), { instanceOf: UpciError, message });
    t.is((e as UpciError).code, 'HOST_OWNED');
    t.regex(e!.message, /fix: /, 'the error says what to do instead');
    t.true(config.equals(before), 'nothing was written');
    device.close();
  });
}

test('a write past config space or misaligned is OUT_OF_RANGE; after release config space is the host\'s', (t) => {
  const { bus, device } = attachedFunction();
  const cfg = bus.config();
  t.throws(() => cfg.write(4, 4096, 0), { code: 'OUT_OF_RANGE' } as never);
  t.throws(() => cfg.write(4, 0x62, 0), { code: 'OUT_OF_RANGE' } as never);
  bus.release();
  t.throws(() => cfg.read(2, 0), { message: /reclaimed by the host/ });
  device.close();
});
