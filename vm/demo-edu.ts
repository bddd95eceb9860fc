/** The demo's driver moment: edu's registers through a mapped BAR, and an MSI round trip. */
import { PciDevice } from '../pci/device.js';
import { Interrupts } from '../pci/intr.js';

const edu = PciDevice.open('0000:00:04.0');
try {
  const bar = edu.mapBar(0);
  console.log(`edu id 0x${bar.read4(0x00).toString(16)}; liveness(0x12345678) = 0x${(bar.write4(0x04, 0x12345678), bar.read4(0x04)).toString(16)}`);
  const irq = Interrupts.establish(edu);
  const started = process.hrtime.bigint();
  await new Promise<void>((resolve) => {
    const sub = irq.vector(0).events.subscribe((event) => {
      bar.write4(0x64, bar.read4(0x24));
      event.ack();
      sub.unsubscribe();
      resolve();
    });
    bar.write4(0x60, 1);
  });
  console.log(`edu ${irq.type} interrupt delivered in ${Number(process.hrtime.bigint() - started) / 1000} µs (guest time, TCG)`);
} finally {
  edu.close();
}
