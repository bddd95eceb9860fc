// The upci side of the interrupt round trip, for vm/benchmarks/irq.ts: run
// in the main thread, or in a worker (irq-worker.ts) as a driver thread runs.
import { EDU } from '../../drivers/edu-registers.js';
import { eduAddress } from './harness.js';

/** Microseconds since an hrtime.bigint() reading. */
export const micros = (from: bigint) => Number(process.hrtime.bigint() - from) / 1000;

/** Opens edu, establishes MSI and times `iterations` raise -> handler (woken by this thread's event loop) -> ack round trips, in µs. */
export async function upciRoundTrips(iterations: number): Promise<number[]> {
  const { PciDevice } = await import('../../pci/device.js');
  const { Interrupts } = await import('../../pci/intr.js');
  const edu = PciDevice.open(eduAddress);
  try {
    const bar = edu.mapBar(0);
    const irq = Interrupts.establish(edu, { type: 'msi' });
    edu.enableBusMaster();
    let wake: (() => void) | undefined;
    const sub = irq.vector(0).events.subscribe((event) => {
      bar.write4(EDU.IRQ_ACK, bar.read4(EDU.IRQ_STATUS));
      event.ack();
      wake?.();
    });
    const samples: number[] = [];
    for (let i = 0; i < iterations; i++) {
      const t0 = process.hrtime.bigint();
      await new Promise<void>((resolve) => {
        wake = resolve;
        bar.write4(EDU.IRQ_RAISE, 1);
      });
      samples.push(micros(t0));
    }
    sub.unsubscribe();
    return samples;
  } finally {
    edu.close();
  }
}
