/**
 * The driver kit's 64-bit bus-address writes (drivers/kit/bus-address.ts):
 * the low and high halves of addresses below and above 4 GiB, up to
 * 2^53 - 1, in descriptor words and in a register pair (low first).
 */
import test from 'ava';
import { high32, storeBus64, writeRegister64 } from '../../drivers/kit/bus-address.js';

const ADDRESSES = [0, 0x1000, 0xffff_f000, 0x1_0000_0000, 0x1_2345_6789_a000, 2 ** 53 - 1];
const halves = (a: number) => [Number(BigInt(a) & 0xffff_ffffn), Number(BigInt(a) >> 32n)];

test('storeBus64 writes each address as low then high word where it is told, touching nothing else', (t) => {
  const from = Float64Array.from(ADDRESSES);
  const words = new Uint32Array(2 * ADDRESSES.length + 2).fill(0xdead);
  for (let i = 0; i < ADDRESSES.length; i++) storeBus64(words, 1 + 2 * i, from, i);
  t.is(words[0], 0xdead);
  t.is(words.at(-1), 0xdead);
  t.deepEqual([...words.subarray(1, -1)], ADDRESSES.flatMap(halves));
});

test('writeRegister64 writes the low half at the offset, then the high half 4 bytes on', (t) => {
  const writes: [number, number][] = [];
  const space = { write4: (offset: number, value: number) => void writes.push([offset, value]) };
  for (const a of ADDRESSES) writeRegister64(space, 0x28, a);
  t.deepEqual(writes, ADDRESSES.flatMap((a) => [[0x28, halves(a)[0]!], [0x2c, halves(a)[1]!]]));
  t.deepEqual(ADDRESSES.map(high32), ADDRESSES.map((a) => halves(a)[1]));
});
