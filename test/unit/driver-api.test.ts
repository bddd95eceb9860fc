/**
 * The driver API changes real drivers need (issue 12 section 1), on fakes:
 * interrupt vectors with an explicit lifetime (held events, per-vector
 * mask/unmask, no bus mastering from establish, the port's automasked), and
 * async attach bounded by attachTimeoutMs with a clean detach hook.
 */
import test from 'ava';
import { setup } from 'xstate';
import { parseHostConfig } from '../../actors/config.js';
import type { HostEvent } from '../../actors/events.js';
import { DriverHost } from '../../actors/host.js';
import { defineDriver } from '../../drivers/contract.js';
import * as libc from '../../kernel/libc.js';
import type { IrqSource } from '../../kernel/port.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../pci/config.js';
import { PciDevice } from '../../pci/device.js';
import { Interrupts, type InterruptEvent } from '../../pci/intr.js';
import { fakeDevice, openFake } from '../support/fake-device.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const noDma = { iovaRanges: [{ start: 0n, end: (1n << 39n) - 1n }], pageSizes: 0x1000n, availableMappings: () => 65535, map: () => {}, unmap: () => {}, unmapAll: () => {} };

function signal(fd: number, n = 1): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  libc.writeAll(fd, b, 'eventfd write');
}

/** An INTx device whose port says automasked = `automasked`; counts unmasks. */
function intxDevice(automasked: boolean): { device: PciDevice; fd: number; unmasks: () => number; config: Buffer } {
  const fd = libc.eventfd(libc.EFD_NONBLOCK);
  let unmasks = 0;
  const fake = fakeDevice('0000:00:09.0', { intx: 1 }, {
    dma: noDma,
    enableIrqs: (): IrqSource[] => [{ fd, format: 'counter', firstVector: 0, vectors: 1, owner: 'device' }],
    disableIrqs: () => {},
    unmaskIntx: () => void unmasks++,
    close: () => libc.close(fd),
  });
  const irqs = fake.file.irqs as { intx: { automasked: boolean } };
  irqs.intx = { ...fake.file.irqs.intx, automasked };
  return { device: openFake(fake), fd, unmasks: () => unmasks, config: fake.config };
}

async function next(events: InterruptEvent[], n: number, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (events.length < n) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

test.serial('interrupts before a subscription are held and delivered as one event; establishing leaves bus mastering off; the last unsubscribe does not disestablish', async (t) => {
  const { device, fd, unmasks, config } = intxDevice(true);
  const irq = Interrupts.establish(device, { type: 'intx' });
  t.is(config.readUInt16LE(PCI_COMMAND) & PCI_COMMAND_MASTER, 0, 'establish did not turn bus mastering on');
  signal(fd, 3);
  await sleep(300); // the worker has read the count; nobody listens yet
  const got: InterruptEvent[] = [];
  const sub = irq.vector(0).events.subscribe((e) => got.push(e));
  await next(got, 1, 'the held interrupt');
  t.is(got[0]!.count, 3, 'the held count arrives in one event');
  t.is(unmasks(), 0, 'the line stays masked until the driver acks');
  got[0]!.ack();
  t.is(unmasks(), 1);
  sub.unsubscribe();
  t.false(irq.isReleased, 'vectors live until release()');
  irq.release();
  t.true(irq.isReleased);
  device.close();
});

test.serial('a masked vector holds its interrupts until unmask(); a port that does not automask gets no unmask calls', async (t) => {
  const { device, fd, unmasks } = intxDevice(false);
  const irq = Interrupts.establish(device, { type: 'intx' });
  t.false(irq.automasked);
  const got: InterruptEvent[] = [];
  irq.vector(0).events.subscribe((e) => got.push(e));
  const vector = irq.vector(0);
  vector.mask();
  signal(fd, 2);
  await sleep(300);
  t.is(got.length, 0, 'nothing delivered while masked');
  t.is(vector.stats().delivered, 0);
  vector.unmask();
  await next(got, 1, 'the interrupts held while masked');
  t.is(got[0]!.count, 2);
  got[0]!.ack();
  t.is(unmasks(), 0, 'automasked is false: ack does not unmask');
  signal(fd, 1);
  await next(got, 2, 'an interrupt after unmask');
  t.is(got[1]!.count, 1);
  device.close();
});

const idle = setup({}).createMachine({ id: 'idle' });

function hostWith(attach: () => unknown, detach?: () => Promise<void>, attachTimeoutMs = 200): { host: DriverHost; events: HostEvent[] } {
  const driver = defineDriver({
    name: 'slow', description: 'unit-test driver', match: [{ vendor: 0x1234 }], options: {},
    attach: () => attach() as Promise<object>, ...(detach === undefined ? {} : { detach }), machine: idle,
  });
  const registry = new Map([[driver.name, driver]]);
  const open = () => {
    const fake = fakeDevice('0000:00:09.0', {}, { dma: noDma });
    fake.config.writeUInt16LE(0x1234, 0);
    return openFake(fake);
  };
  const config = parseHostConfig({ attachTimeoutMs, restart: { initialDelayMs: 10, maxDelayMs: 10, maxRestarts: 0 }, devices: [{ address: '0000:00:09.0', driver: 'slow' }] }, registry);
  const host = DriverHost.claim(config, { registry, open });
  const events: HostEvent[] = [];
  host.events.subscribe((e) => events.push(e));
  return { host, events };
}

test.serial('an async attach is awaited; one that does not finish within attachTimeoutMs is an attach fault; detach runs before the quiesce', async (t) => {
  const order: string[] = [];
  const ok = hostWith(async () => {
    await sleep(50);
    order.push('attached');
    return {};
  }, async () => void order.push('detach'));
  ok.host.start();
  const deadline = Date.now() + 5000;
  while (!ok.events.some((e) => e.type === 'state' && e.state === 'running')) {
    if (Date.now() > deadline) throw new Error('the async attach never reached running');
    await sleep(5);
  }
  t.deepEqual(order, ['attached']);
  await ok.host.shutdown();
  t.deepEqual(order, ['attached', 'detach']);

  const hung = hostWith(() => new Promise(() => {}));
  hung.host.start();
  const report = await hung.host.settled;
  const fault = hung.events.find((e) => e.type === 'fault');
  t.regex(fault?.type === 'fault' ? fault.fault.message : '', /attach did not finish within 200 ms \(attachTimeoutMs\)/);
  t.is(report[0]!.outcome.kind, 'gave-up');
  await hung.host.shutdown();
});
