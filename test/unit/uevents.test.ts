/**
 * The kernel's uevent datagrams (kernel/linux/uevents.ts): which PCI function one is about and what happened to
 * it; anything else (another subsystem, udev's re-broadcast, a malformed datagram) is no PCI uevent.
 */
import test from 'ava';
import { parsePciUevent } from '../../kernel/linux/uevents.js';

const datagram = (header: string, fields: string[]) => Buffer.from([header, ...fields, ''].join('\0'), 'latin1');

test('add, bind, unbind and remove of a PCI function: the action and its address', (t) => {
  const pci = (action: string, extra: string[] = []) => datagram(`${action}@/devices/pci0000:00/0000:00:1c.0/0000:03:00.0`, [
    `ACTION=${action}`, 'DEVPATH=/devices/pci0000:00/0000:00:1c.0/0000:03:00.0', 'SUBSYSTEM=pci', ...extra,
    'PCI_CLASS=10802', 'PCI_ID=1B36:0010', 'PCI_SUBSYS_ID=1AF4:1100', 'PCI_SLOT_NAME=0000:03:00.0', 'MODALIAS=pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02', 'SEQNUM=1234',
  ]);
  t.deepEqual(parsePciUevent(pci('add')), { action: 'add', address: '0000:03:00.0' });
  t.deepEqual(parsePciUevent(pci('bind', ['DRIVER=vfio-pci'])), { action: 'bind', address: '0000:03:00.0' });
  t.deepEqual(parsePciUevent(pci('unbind')), { action: 'unbind', address: '0000:03:00.0' });
  t.deepEqual(parsePciUevent(pci('remove')), { action: 'remove', address: '0000:03:00.0' });
});

test('not a PCI function\'s uevent: another subsystem, udev\'s re-broadcast, no slot name, a bad address, garbage', (t) => {
  t.is(parsePciUevent(datagram('add@/devices/virtual/net/tap0', ['ACTION=add', 'SUBSYSTEM=net', 'INTERFACE=tap0'])), undefined);
  // Only the pci subsystem's own events count, whatever else a datagram names.
  t.is(parsePciUevent(datagram('add@/devices/pci0000:00/0000:00:1c.0/pci_bus/0000:03', ['ACTION=add', 'SUBSYSTEM=pci_bus', 'PCI_SLOT_NAME=0000:03:00.0'])), undefined);
  // udev's own messages start with "libudev" and a binary header.
  t.is(parsePciUevent(Buffer.concat([Buffer.from('libudev\0'), Buffer.alloc(32), Buffer.from('ACTION=add\0SUBSYSTEM=pci\0PCI_SLOT_NAME=0000:03:00.0\0')])), undefined);
  t.is(parsePciUevent(datagram('add@/devices/pci0000:00', ['ACTION=add', 'SUBSYSTEM=pci'])), undefined);
  t.is(parsePciUevent(datagram('add@/devices/x', ['ACTION=add', 'SUBSYSTEM=pci', 'PCI_SLOT_NAME=../../etc'])), undefined);
  t.is(parsePciUevent(Buffer.from([0xff, 0x00, 0x41])), undefined);
  t.is(parsePciUevent(Buffer.alloc(0)), undefined);
});
