import test from 'ava';
import { AttachedBus } from '../../workers/driver-bus.js';
import { DeviceMeter } from '../../actors/meter.js';
import { BusDma } from '../../pci/bus-dma.js';
import { PciDevice } from '../../pci/device.js';
import { Interrupts } from '../../pci/intr.js';
import { quiesce } from '../../pci/teardown.js';
import { recordingPort, throughTheFd, type PortRecord } from '../support/recording-port.js';
import { sharedFakePort } from '../support/shared-fake.js';

test('quiesce runs bus mastering, interrupts, DMA and BARs in that order whatever the caller lists first, with `first` before and `last` after', (t) => {
  const order: string[] = [];
  const step = (name: string) => () => void order.push(name);
  quiesce('test', {
    bars: [step('bar0'), step('bar2')],
    dma: [step('dma')],
    interrupts: [step('msi')],
    busMaster: step('bus master off'),
  }, { last: [step('close')], first: [step('driver hook')] });
  t.deepEqual(order, ['driver hook', 'bus master off', 'msi', 'dma', 'bar0', 'bar2', 'close']);
});

test('every quiesce step runs when earlier ones throw, and the failures are thrown together', (t) => {
  const order: string[] = [];
  const error = t.throws(() => quiesce('stopping x', {
    busMaster: () => { throw new Error('config write failed'); },
    dma: [() => { throw new Error('unmap failed'); }],
    bars: [() => void order.push('bars')],
  }, { last: [() => void order.push('close')] }));
  t.true(error instanceof AggregateError);
  t.is(error!.message, 'stopping x: 2 steps failed');
  t.deepEqual(order, ['bars', 'close']);
});

/*
 * The callers: each quiesces a device in the order above, as the kernel port
 * sees it. The device is a shared fake (its IOMMU table and MSI enable bit in
 * shared memory) behind a recording port that also records bus mastering
 * going off, so the records are the order itself: bus mastering off, then
 * the vectors, then the DMA mappings. The third caller, the main thread
 * taking a device back from a driver thread, is tested where the thread is
 * started (driver-thread.test.ts).
 */
const A = '0000:00:08.0';

function recordedDevice() {
  const records: PortRecord[] = [];
  const fake = sharedFakePort({ [A]: { vendor: 0x1234, device: 0x0001, irqs: { msi: 1 } } });
  const device = PciDevice.open(A, { port: recordingPort(fake, records, throughTheFd, { busMasterWrites: true }) });
  return { records, device, state: fake.states.get(A)! };
}

const IN_ORDER = [`${A} bus master off`, `${A} disableIrqs msi (bus master off)`, `${A} dma unmap (bus master off)`];

test('PciDevice.close: bus mastering off, then the vectors, then the DMA mappings, then the close', (t) => {
  const { records, device, state } = recordedDevice();
  Interrupts.establish(device, { type: 'msi' });
  BusDma.forDevice(device).createTag({}).allocMemory(4096);
  device.enableBusMaster();
  t.deepEqual([state.mappings, state.enabled('msi'), device.busMasterEnabled], [1, true, true]);
  device.close();
  t.deepEqual(records, [...IN_ORDER, `${A} close (bus master off)`]);
  t.deepEqual([state.mappings, state.enabled('msi')], [0, false], 'read back: no mapping left, MSI off');
});

test('a DriverBus release: bus mastering off, then the vectors, then the DMA mappings; the device stays open', (t) => {
  const { records, device, state } = recordedDevice();
  t.teardown(() => device.close());
  const hooks = { name: 'order', watchdogMs: 1000, services: { provide: () => () => {}, consume: () => Promise.reject(new Error('no services here')), release: () => {} }, meter: new DeviceMeter(), onStall: () => {}, onNote: () => {} };
  const bus = new AttachedBus(device, 0, hooks);
  bus.establishInterrupts({ type: 'msi' });
  const dma = bus.dma();
  dma.createTag({}).allocMemory(4096);
  dma.enableBusMaster();
  bus.release();
  t.deepEqual(records, IN_ORDER);
  t.deepEqual([state.mappings, state.enabled('msi'), device.isOpen], [0, false, true]);
});
