/**
 * The fake device must refuse what VFIO refuses, or the unit tests above the
 * kernel port could pass code the kernel would stop. Each case here is one
 * thing vfio-pci does (drivers/vfio/pci/vfio_pci_core.c, vfio_pci_config.c).
 */
import test from 'ava';
import { PCI_COMMAND, PCI_COMMAND_MASTER, PCI_INTERRUPT_PIN, PCI_VENDOR_ID } from '../../pci/config.js';
import { Interrupts } from '../../pci/intr.js';
import { acceptingDma, fakeDevice, openFake } from '../support/fake-device.js';

const A = '0000:00:04.0';

test('vectors offered come from config space: INTx only with an interrupt pin, MSI and MSI-X from their capabilities', (t) => {
  const { file, config } = fakeDevice(A, { intx: 1, msi: 4, msix: 3 }, { dma: acceptingDma() });
  t.deepEqual([file.irqs.intx.count, file.irqs.msi.count, file.irqs.msix.count], [1, 4, 3]);
  const device = openFake({ file, config });
  t.teardown(() => device.close());
  t.like(device.msi(), { vectors: 4 } as never);
  t.like(device.msix(), { vectors: 3 } as never);
  const pinless = fakeDevice(A, {}, { dma: acceptingDma() });
  t.is(pinless.config[PCI_INTERRUPT_PIN], 0);
  t.is(pinless.file.irqs.intx.count, 0, 'no INTx without an interrupt pin');
});

test('a device with no interrupt pin and no MSI cannot establish interrupts', (t) => {
  const device = openFake(fakeDevice(A, {}, { dma: acceptingDma() }));
  t.teardown(() => device.close());
  t.throws(() => Interrupts.establish(device), { code: 'NO_SUCH_REGION', message: /no interrupt type/ } as never);
  t.throws(() => Interrupts.establish(device, { type: 'intx' }), { code: 'NOT_OFFERED', message: /offers 0 intx/ } as never);
});

test('enableIrqs refuses more vectors than offered and a second kind while one is enabled (EINVAL)', (t) => {
  const { file } = fakeDevice(A, { intx: 1, msi: 2 }, { dma: acceptingDma() });
  t.throws(() => file.enableIrqs('msi', 4), { code: 'KERNEL', message: /EINVAL/ } as never);
  file.enableIrqs('msi', 2);
  t.throws(() => file.enableIrqs('intx', 1), { code: 'KERNEL', message: /enabled msi.*EINVAL/ } as never);
  file.disableIrqs('msi');
  t.notThrows(() => file.enableIrqs('intx', 1));
});

test('config space: read-only header fields ignore writes, accesses past its end and to empty regions fail', (t) => {
  const { file, config } = fakeDevice(A, { intx: 1 }, { dma: acceptingDma() });
  config.writeUInt16LE(0x1234, PCI_VENDOR_ID);
  file.writeRegion(7, PCI_VENDOR_ID, Buffer.from([0xff, 0xff]));
  file.writeRegion(7, PCI_INTERRUPT_PIN, Buffer.from([0]));
  file.writeRegion(7, PCI_COMMAND, Buffer.from([PCI_COMMAND_MASTER, 0]));
  t.is(config.readUInt16LE(PCI_VENDOR_ID), 0x1234);
  t.is(config[PCI_INTERRUPT_PIN], 1);
  t.is(config.readUInt16LE(PCI_COMMAND), PCI_COMMAND_MASTER, 'the command register is writable');
  t.throws(() => file.readRegion(7, 254, Buffer.alloc(4)), { message: /EINVAL/ });
  t.throws(() => file.writeRegion(7, 256, Buffer.alloc(1)), { message: /EINVAL/ });
  t.throws(() => file.readRegion(0, 0, Buffer.alloc(4)), { message: /region 0.*EINVAL/ });
});

test('reset is refused without a reset method; with one it restores power-on state but what the PCI core restores', (t) => {
  t.throws(() => fakeDevice(A, {}, { dma: acceptingDma() }).file.reset(), { code: 'KERNEL', message: /VFIO_DEVICE_RESET.*ENOTTY/ } as never);
  let resets = 0;
  const { file, config } = fakeDevice(A, {}, { dma: acceptingDma(), canReset: true, reset: () => void resets++ });
  file.writeRegion(7, PCI_COMMAND, Buffer.from([PCI_COMMAND_MASTER, 0]));
  file.writeRegion(7, 0x80, Buffer.from([0xab]));
  file.reset();
  t.is(resets, 1);
  t.is(config[0x80], 0, 'device-specific config returns to power-on state');
  t.is(config.readUInt16LE(PCI_COMMAND), PCI_COMMAND_MASTER, 'the command register is saved and restored around the reset');
});
