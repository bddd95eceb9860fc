/**
 * The far end of block-service.test's ring stress: holds `tokens` tokens,
 * sends each (as fast as it can, 64 per turn of its event loop) through
 * `out`, and takes them back from `back` (RingConsumer.start: woken by
 * Atomics.waitAsync). A lost wake-up on either ring stalls the exchange
 * until the consumer's re-check. Any message gets this thread's ring
 * wake-up counts back (shm/ring.ts ringWakeUps).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { RingConsumer, RingProducer, ringWakeUps } from '../../shm/ring.js';

const { out, back, tokens } = workerData as { out: SharedArrayBuffer; back: SharedArrayBuffer; tokens: number };
const producer = RingProducer.claim(out);
const consumer = RingConsumer.claim(back);
const free = Array.from({ length: tokens }, (_, i) => i);
consumer.start((w, at) => void free.push(w[at]!));
const send = () => {
  for (let k = 0; k < 64 && free.length > 0; k++) {
    const at = producer.reserve();
    if (at < 0) throw new Error('the out ring is full with tokens left: more slots than tokens were promised');
    producer.words[at] = free.pop()!;
    producer.publish();
  }
  setImmediate(send);
};
send();
parentPort!.on('message', () => parentPort!.postMessage(ringWakeUps()));
parentPort!.unref();
