import test from 'ava';
import { parsePciAddress, pciAddressParts } from '../../kernel/pci-address.js';

test('canonical and short forms parse to DDDD:BB:SS.F', (t) => {
  t.is(String(parsePciAddress('0000:00:04.0')), '0000:00:04.0');
  t.is(String(parsePciAddress('00:1F.7')), '0000:00:1f.7');
  t.deepEqual(pciAddressParts(parsePciAddress('0001:3a:1f.7')), { domain: 1, bus: 0x3a, slot: 0x1f, func: 7 });
});

for (const bad of ['', '04.0', '0000:00:20.0', '0000:00:04.8', '0000:00:04', 'x0:00:04.0', '../../etc']) {
  test(`"${bad}" is rejected with the expected form`, (t) => {
    t.throws(() => parsePciAddress(bad), { code: 'BAD_ADDRESS', message: /DDDD:BB:SS\.F/ } as never);
  });
}
