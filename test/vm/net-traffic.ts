/** Test traffic through a packet port (e1000e.test, soak.test): numbered frames out with backpressure, and a check of those that come in. */
import type { PacketPort, RxFrame } from '../../drivers/packet.js';
import { buildFrame, checkFrame, macBytes, SequenceCheck } from '../../vm/net/frames.js';
import { within } from '../support/bounded.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** How long the transmit ring may stay full: writable() must have resolved by then (the driver reclaims its buffers on each transmit interrupt). */
const FULL_MS = 10_000;

/**
 * Sends frames seq from..from+count-1 (lengths from `length(seq)`), honouring backpressure, at most `pps` per second.
 * Waits for room only on writable(), with no poll beside it: a writable() that never resolves fails the send.
 */
export async function sendSequence(port: PacketPort, dst: string, count: number, length: (seq: number) => number, pps = 0, from = 0): Promise<void> {
  const src = macBytes(port.attached!.mac);
  const dstBytes = macBytes(dst);
  const batchSize = 32;
  const storage = Array.from({ length: batchSize }, () => new Uint8Array(1514));
  const started = performance.now();
  for (let base = 0; base < count; base += batchSize) {
    const n = Math.min(batchSize, count - base);
    const batch = storage.slice(0, n).map((buf, i) => buildFrame(buf, dstBytes, src, from + base + i, length(from + base + i)));
    let sent = 0;
    while ((sent += port.send(batch, sent)) < n) {
      await within(FULL_MS, port.writable(), `the transmit ring was full and writable() did not resolve (frame ${from + base + sent})`);
    }
    if (pps > 0) {
      const due = started + ((base + n) * 1000) / pps;
      const wait = due - performance.now();
      if (wait > 1) await sleep(wait);
    } else if (base % 1024 === 0) {
      await new Promise((r) => setImmediate(r));
    }
  }
}

/** Collects the test frames the port receives (releasing each), until stop(); `first` and `last` are when the first and the latest came. */
export function collect(port: PacketPort, count: number): { check: SequenceCheck; readonly first: number; readonly last: number; stop(): void } {
  const check = new SequenceCheck(count);
  let first = 0;
  let last = 0;
  const sub = port.frames.subscribe((f: RxFrame) => {
    last = performance.now();
    if (check.frames === 0) first = last;
    check.add(checkFrame(f.bytes, f.length));
    f.release();
  });
  return { check, get first() { return first; }, get last() { return last; }, stop: () => sub.unsubscribe() };
}
