import test from 'ava';
import { decodeBars, decodeMsi, decodeMsix, readHeader, walkCapabilities, type ConfigReader, type Width } from '../../pci/config.js';

/** A config space image with little-endian reads, as a device would answer. */
function image(size = 256): Buffer & ConfigReader {
  const buf = Buffer.alloc(size) as Buffer & ConfigReader;
  buf.read = (width: Width, offset: number) =>
    width === 1 ? buf.readUInt8(offset) : width === 2 ? buf.readUInt16LE(offset) : buf.readUInt32LE(offset);
  return buf;
}

test('header fields of a type 0 function', (t) => {
  const cfg = image();
  cfg.writeUInt16LE(0x1234, 0); cfg.writeUInt16LE(0x11e8, 2);
  cfg.writeUInt32LE(0x00ff0010, 8); // class 00ff00, revision 0x10
  cfg.writeUInt8(0x80, 0x0e); // multi-function, type 0
  cfg.writeUInt16LE(0x1af4, 0x2c); cfg.writeUInt16LE(0x1100, 0x2e);
  cfg.writeUInt8(1, 0x3d);
  t.like(readHeader(cfg), {
    vendor: 0x1234, device: 0x11e8, classCode: 0x00ff00, revision: 0x10, headerType: 0, multiFunction: true,
    subsystemVendor: 0x1af4, subsystemDevice: 0x1100, interruptPin: 1,
  });
});

test('BAR decoding: I/O, 32-bit, prefetchable 64-bit, unimplemented', (t) => {
  const bars = decodeBars([0x0000c001, 0xfe000000, 0, 0xc000000c, 0x00000001, 0]);
  t.deepEqual(bars, [
    { index: 0, type: 'io', prefetchable: false, base: 0xc000n },
    { index: 1, type: 'mem32', prefetchable: false, base: 0xfe000000n },
    { index: 3, type: 'mem64', prefetchable: true, base: 0x1c0000000n },
  ]);
});

test('a 64-bit BAR in the last slot is rejected, not misread', (t) => {
  t.throws(() => decodeBars([0, 0, 0, 0, 0, 0x4]), { message: /BAR5 is 64-bit but has no upper half/ });
});

function chain(cfg: Buffer, caps: [offset: number, id: number][]): void {
  cfg.writeUInt16LE(0x10, 6); // status: capability list
  cfg.writeUInt8(caps[0]![0], 0x34);
  caps.forEach(([offset, id], i) => {
    cfg.writeUInt8(id, offset);
    cfg.writeUInt8(caps[i + 1]?.[0] ?? 0, offset + 1);
  });
}

test('capability walk: standard list in order, with names', (t) => {
  const cfg = image();
  chain(cfg, [[0x40, 0x01], [0x50, 0x05], [0x70, 0x11]]);
  t.deepEqual(walkCapabilities(cfg).map((c) => [c.offset, c.name]), [[0x40, 'power-management'], [0x50, 'msi'], [0x70, 'msi-x']]);
});

test('capability walk: a looping list ends instead of hanging', (t) => {
  const cfg = image();
  chain(cfg, [[0x40, 0x01], [0x50, 0x05]]);
  cfg.writeUInt8(0x40, 0x51); // 0x50 points back to 0x40
  t.deepEqual(walkCapabilities(cfg).map((c) => c.offset), [0x40, 0x50]);
});

test('capability walk: no list when the status bit is clear; pointers below 0x40 are ignored', (t) => {
  const cfg = image();
  cfg.writeUInt8(0x40, 0x34);
  t.deepEqual(walkCapabilities(cfg), []);
  cfg.writeUInt16LE(0x10, 6);
  cfg.writeUInt8(0x20, 0x34);
  t.deepEqual(walkCapabilities(cfg), []);
});

test('capability walk: PCIe extended list, only for PCIe functions', (t) => {
  const cfg = image(4096);
  chain(cfg, [[0x40, 0x10]]);
  cfg.writeUInt32LE((0x140 << 20) | (1 << 16) | 0x0001, 0x100); // AER -> 0x140
  cfg.writeUInt32LE((0 << 20) | (1 << 16) | 0x0003, 0x140); // serial number, end
  t.deepEqual(walkCapabilities(cfg, 4096).map((c) => [c.offset, c.name, c.extended]), [
    [0x40, 'pci-express', false], [0x100, 'advanced-error-reporting', true], [0x140, 'serial-number', true],
  ]);
  t.is(walkCapabilities(cfg, 256).length, 1);
});

test('MSI and MSI-X capability decoding', (t) => {
  const cfg = image();
  cfg.writeUInt16LE((1 << 8) | (1 << 7) | (3 << 1), 0x52); // per-vector mask, 64-bit, 8 vectors
  t.deepEqual(decodeMsi(cfg, 0x50), { offset: 0x50, vectors: 8, address64: true, perVectorMasking: true, enabled: false });
  cfg.writeUInt16LE((1 << 8) | (1 << 7) | (3 << 1) | 1, 0x52); // and MSI Enable
  t.true(decodeMsi(cfg, 0x50).enabled);
  cfg.writeUInt16LE(4, 0x72); // 5 vectors
  cfg.writeUInt32LE(0x2000 | 3, 0x74);
  cfg.writeUInt32LE(0x3000 | 3, 0x78);
  t.deepEqual(decodeMsix(cfg, 0x70), { offset: 0x70, vectors: 5, tableBar: 3, tableOffset: 0x2000, pbaBar: 3, pbaOffset: 0x3000, enabled: false });
  cfg.writeUInt16LE(0x8000 | 4, 0x72); // MSI-X Enable
  t.true(decodeMsix(cfg, 0x70).enabled);
});
