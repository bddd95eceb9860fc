import test from 'ava';
import { PciDevice } from '../../pci/device.js';
import { acceptingDma, fakeDevice, fakePort } from '../support/fake-device.js';

test('a function is open once per process: a second open is BUSY until the first is closed', (t) => {
  let closes = 0;
  const port = fakePort((address) => fakeDevice(address, {}, { dma: acceptingDma(), close: () => void closes++ }).file);
  const first = PciDevice.open('0000:00:04.0', { port });
  t.throws(() => PciDevice.open('00:04.0', { port }), { code: 'BUSY', message: /already open in this process/ } as never);
  const other = PciDevice.open('0000:00:05.0', { port });
  first.close();
  const again = PciDevice.open('0000:00:04.0', { port });
  again.close();
  other.close();
  t.is(closes, 3);
});
