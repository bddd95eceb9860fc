/**
 * The driver API changes real drivers need (issue 12 section 1), on fakes:
 * interrupt vectors with an explicit lifetime (held events, per-vector
 * mask/unmask, no bus mastering from establish, the port's automasked),
 * async attach bounded by attachTimeoutMs with a clean detach hook, and a
 * bus_dma whose objects reach nothing of the device or the kernel.
 */
import test from 'ava';
import { setup } from 'xstate';
import { parseHostConfig } from '../../actors/config.js';
import type { HostEvent } from '../../actors/events.js';
import { AttachedBus } from '../../workers/driver-bus.js';
import { DriverHost } from '../../actors/host.js';
import { DeviceMeter } from '../../actors/meter.js';
import { defineDriver } from '../../drivers/contract.js';
import * as libc from '../../kernel/libc.js';
import type { IrqSource } from '../../kernel/port.js';
import { BusDma } from '../../pci/bus-dma.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../pci/config.js';
import { PciDevice } from '../../pci/device.js';
import { Interrupts, type InterruptEvent } from '../../pci/intr.js';
import { allocShared } from '../../shm/mapping.js';
import { until } from '../support/bounded.js';
import { acceptingDma, fakeDevice, openFake } from '../support/fake-device.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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
    dma: acceptingDma(),
    enableIrqs: (): IrqSource[] => [{ fd, format: 'counter', firstVector: 0, vectors: 1, owner: 'device' }],
    disableIrqs: () => {},
    unmaskIntx: () => void unmasks++,
    close: () => libc.close(fd),
  });
  const irqs = fake.file.irqs as { intx: { automasked: boolean } };
  irqs.intx = { ...fake.file.irqs.intx, automasked };
  return { device: openFake(fake), fd, unmasks: () => unmasks, config: fake.config };
}

const next = (events: InterruptEvent[], n: number, what: string, ms = 5000) => until(what, () => events.length >= n, ms);

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
    const fake = fakeDevice('0000:00:09.0', {}, { dma: acceptingDma() });
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
  await until('the async attach to reach running', () => ok.events.some((e) => e.type === 'state' && e.state === 'running'), 5000);
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

const isNative = (f: unknown) => typeof f === 'function' && /\[native code\]\s*\}$/.test(Function.prototype.toString.call(f));

/**
 * Every value a driver can reach from `roots` by reading properties, as
 * TypeScript's `private` does not stop it at run time: own and inherited
 * keys (symbols too), getters called on the object, functions (a class's
 * statics) included. The prototypes of built-ins are not walked, nor the
 * contents of memory (SharedArrayBuffers, typed arrays). Also returns every
 * key seen.
 */
function reachable(roots: readonly unknown[]): { values: Set<unknown>; keys: Set<string | symbol> } {
  const values = new Set<unknown>();
  const keys = new Set<string | symbol>();
  const queue = [...roots];
  while (queue.length > 0) {
    const value = queue.pop();
    if ((typeof value !== 'object' && typeof value !== 'function') || value === null || values.has(value)) continue;
    values.add(value);
    if (value instanceof SharedArrayBuffer || ArrayBuffer.isView(value)) continue;
    for (let o: object | null = value; o !== null && !(o !== value && isNative(Object.getOwnPropertyDescriptor(o, 'constructor')?.value)); o = Object.getPrototypeOf(o) as object | null) {
      if (o !== value) queue.push(o);
      for (const key of Reflect.ownKeys(o)) {
        keys.add(key);
        const d = Object.getOwnPropertyDescriptor(o, key)!;
        if ('value' in d) queue.push(d.value);
        else if (d.get !== undefined) {
          try {
            queue.push(d.get.call(value));
          } catch {
            // A getter that refuses (a freed buffer, an unloaded map) gives nothing.
          }
        }
      }
    }
  }
  return { values, keys };
}

test('a driver\'s bus_dma, tags, memory, maps and pools reach neither the BusDma (releaseMappings), the device, the kernel\'s DMA domain nor its IOVA allocator', (t) => {
  const domain = acceptingDma();
  const device = openFake(fakeDevice('0000:00:0a.0', {}, { dma: domain }));
  const hooks = { name: 'surface', watchdogMs: 1000, services: { provide: () => () => {}, consume: () => Promise.reject(new Error('no services here')), release: () => {} }, meter: new DeviceMeter(), onStall: () => {}, onNote: () => {} };
  const dma = new AttachedBus(device, 0, hooks).dma();
  const tag = dma.createTag({ alignment: 512, addressLimit: (1n << 32n) - 1n });
  const child = tag.derive({ boundary: 0x10000 });
  const memory = child.allocMemory(8192);
  const map = tag.createMap();
  const loaded = map.load(memory, 4096);
  const sab = tag.createMap().load(allocShared(4096));
  const pool = tag.createPool({ entrySize: 512, entries: 8 });
  const freed = tag.allocMemory(4096);
  freed.free();

  t.false('dma' in tag, 'a tag has no dma property');
  const { values, keys } = reachable([dma, tag, child, memory, map, loaded, sab, pool, freed]);
  // The walk does see what a driver is meant to have.
  t.true(values.has(loaded.segments[0]) && values.has(pool.busAddresses) && values.has(memory.buffer) && values.has(map.tag));
  const busDma = BusDma.forDevice(device);
  const hidden: [unknown, string][] = [
    [busDma, 'the BusDma'], [busDma.releaseMappings, 'BusDma.releaseMappings'], [device, 'the PciDevice'], [device.kernel, 'the DeviceFile'],
    [device.config, 'config space'], [domain, 'the kernel\'s DMA domain'], [domain.iova, 'the IOVA allocator'],
  ];
  for (const [value, what] of hidden) t.false(values.has(value), `${what} is reachable from a driver's bus_dma objects`);
  for (const key of ['releaseMappings', 'domain', 'iova', 'owner', 'kernel']) t.false(keys.has(key), `a driver's bus_dma objects have a '${key}' property`);
  device.close();
});
