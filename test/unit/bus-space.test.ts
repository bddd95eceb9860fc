import test from 'ava';
import { Worker } from 'node:worker_threads';
import { MappedSpace } from '../../pci/bus-space.js';
import { allocShared } from '../../shm/mapping.js';

/** A MappedSpace over ordinary shared memory stands in for a BAR. */
function space(size = 4096): MappedSpace {
  return new MappedSpace(allocShared(size), size, 'test BAR');
}

test('reads and writes of every width land little-endian at their offsets', (t) => {
  const s = space();
  s.write4(0, 0x11223344);
  t.is(s.read1(0), 0x44);
  t.is(s.read2(2), 0x1122);
  s.write8(8, 0x0102030405060708n);
  t.is(s.read4(8), 0x05060708);
  t.is(s.read8(8), 0x0102030405060708n);
  s.write1(1, 0xff);
  s.write2(16, 0xbeef);
  t.is(s.read4(0), 0x1122ff44);
  t.is(s.read2(16), 0xbeef);
});

test('region and multi variants', (t) => {
  const s = space();
  s.writeRegion(4, 0x100, [1, 2, 3]);
  t.deepEqual(s.readRegion(4, 0x100, 3), [1, 2, 3]);
  t.deepEqual(s.readMulti(4, 0x104, 2), [2, 2]);
  s.writeMulti(2, 0x200, [7, 8, 9]);
  t.is(s.read2(0x200), 9);
});

test('out-of-range and misaligned offsets throw and name the problem', (t) => {
  const s = space();
  t.throws(() => s.read4(4096), { code: 'OUT_OF_RANGE', message: /outside the 4096-byte region/ } as never);
  t.throws(() => s.write4(4094, 0), { code: 'OUT_OF_RANGE' } as never);
  t.throws(() => s.read4(-4), { code: 'OUT_OF_RANGE' } as never);
  t.throws(() => s.read4(2), { message: /not aligned/ });
  t.throws(() => s.read8(4), { message: /not aligned/ });
  t.throws(() => s.readRegion(4, 4092, 2), { code: 'OUT_OF_RANGE' } as never);
  t.throws(() => s.read2(Number.NaN), { code: 'OUT_OF_RANGE' } as never);
});

test('a released handle refuses access, and a worker still holding the buffer reads all-ones without faulting', async (t) => {
  const s = space();
  s.write4(0, 0x12345678);
  s.release();
  t.throws(() => s.read4(0), { code: 'RELEASED' } as never);
  t.throws(() => s.write4(0, 1), { code: 'RELEASED' } as never);
  const seen = await new Promise<number>((resolve, reject) => {
    const w = new Worker('const { parentPort, workerData } = require("node:worker_threads"); parentPort.postMessage(new Uint32Array(workerData)[0]);', { eval: true, workerData: s.buffer });
    w.once('message', resolve);
    w.once('error', reject);
  });
  t.is(seen >>> 0, 0xffffffff);
});

test('a worker sees writes through the same SharedArrayBuffer, not a copy', async (t) => {
  const s = space();
  const seen = await new Promise<number>((resolve, reject) => {
    const w = new Worker(
      'const { parentPort } = require("node:worker_threads"); parentPort.once("message", (b) => { const u = new Uint32Array(b); Atomics.store(u, 1, 0xabcd); parentPort.postMessage(Atomics.load(u, 0)); });',
      { eval: true },
    );
    w.once('error', reject);
    w.once('message', resolve);
    s.write4(0, 0x5a5a);
    w.postMessage(s.buffer);
  });
  t.is(seen, 0x5a5a);
  t.is(s.read4(4), 0xabcd);
});
