/**
 * 64-bit bus addresses, written as the two 32-bit halves (low first) that
 * descriptors and register pairs hold. A bus address is a JavaScript
 * number (exact below 2^53).
 *
 * storeBus64 takes the address as a typed array and an index, not as a
 * number argument: a number that is no small integer (an IOVA above 2^31)
 * passed as an argument can become a new heap number per call, 16 bytes
 * per I/O (BENCHMARKS.md, heap notes); a typed array's slot does not.
 */
import type { BusSpace } from '../../pci/bus-space.js';

const TWO_32 = 2 ** 32;

/** words[at] = low half, words[at + 1] = high half of addresses[index]. */
export function storeBus64(words: Uint32Array, at: number, addresses: ArrayLike<number>, index: number): void {
  const address = addresses[index]!;
  words[at] = address >>> 0;
  words[at + 1] = Math.floor(address / TWO_32);
}

/** A 64-bit register pair (NVMe's ASQ, e1000e's RDBAL/RDBAH, virtio's queue_desc): low half at `offset`, then high at `offset + 4`. */
export function writeRegister64(space: Pick<BusSpace, 'write4'>, offset: number, value: number): void {
  space.write4(offset, value >>> 0);
  space.write4(offset + 4, Math.floor(value / TWO_32));
}

/** The high 32 bits of a 64-bit quantity held in a number (a bus address, an LBA). */
export function high32(value: number): number {
  return Math.floor(value / TWO_32);
}
