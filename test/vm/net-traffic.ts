/** Test traffic through a packet port (e1000e.test, soak.test): numbered frames out with backpressure, and a check of those that come in. */
import type { PacketPort, RxFrame } from '../../drivers/packet.js';
import { buildFrame, checkFrame, macBytes, SequenceCheck } from '../../vm/net/frames.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sends frames seq from..from+count-1 (lengths from `length(seq)`), honouring backpressure, at most `pps` per second. */
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
    const deadline = Date.now() + 10_000;
    while ((sent += port.send(batch, sent)) < n) {
      if (Date.now() > deadline) throw new Error(`the transmit ring stayed full for 10 s (frame ${from + base + sent})`);
      await Promise.race([port.writable(), sleep(5)]);
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

