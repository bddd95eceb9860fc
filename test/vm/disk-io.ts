/**
 * What the block-device VM tests share (nvme.test, virtio-blk.test): the
 * same pseudo-random data for a seed, the disk cut into pieces of mixed
 * sizes, and jobs run with a bounded number in flight.
 */

/** xorshift32: the same pseudo-random bytes for a seed, without Math.random. */
export function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** `bytes` filled with prng(seed)'s words. */
export function fill(bytes: Uint8Array, seed: number): Uint8Array {
  const next = prng(seed);
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = next();
  return bytes;
}

/** Cuts [0, total) into pieces of 4 KiB to 1 MiB (multiples of 4 KiB), pseudo-randomly. */
export function pieces(total: number, seed: number): { offset: number; length: number }[] {
  const next = prng(seed);
  const out: { offset: number; length: number }[] = [];
  for (let at = 0; at < total;) {
    const length = Math.min(total - at, 4096 * (1 + (next() % 256)));
    out.push({ offset: at, length });
    at += length;
  }
  return out;
}

/** Runs `jobs` with at most `width` in flight. */
export async function parallel<T>(items: readonly T[], width: number, job: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) {
      const i = next++;
      await job(items[i]!, i);
    }
  }));
}
