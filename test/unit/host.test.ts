/**
 * The driver host without hardware: devices on a fake kernel port (config
 * space in a Buffer, INTx through real eventfds the test signals), drivers
 * written for the test. Covers the device actor's lifecycle, supervision
 * (crash, watchdog, back-off, give-up), all-or-nothing claiming, the event
 * stream, inspection and shutdown.
 */
import test from 'ava';
import { acceptingDma } from '../support/fake-device.js';
import { FakeIntxBench } from '../support/fake-intx-bench.js';
import { record, states } from '../support/host-events.js';
import { map } from 'rxjs';
import { assign, fromEventObservable, fromPromise, setup, type InspectionEvent } from 'xstate';
import { ConfigError } from '../../actors/config-error.js';
import { parseHostConfig } from '../../actors/config.js';
import { DriverHost } from '../../actors/host.js';
import { defineDriver, type AnyDriver, type DriverInput, type DriverVector } from '../../drivers/contract.js';
import type { PciAddress } from '../../kernel/pci-address.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import type { InterruptEvent } from '../../pci/intr.js';
import { until as untilWithin, within } from '../support/bounded.js';

/** A fake function: vendor 0x1234, device as given; counts opens, closes and resets; INTx fires when the test says. */
class FakeBench extends FakeIntxBench {
  readonly closes = new Map<string, number>();
  readonly resets = new Map<string, number>();

  constructor(
    private readonly devices: Record<string, number>,
    private readonly canReset = false,
  ) {
    super();
  }

  protected deviceId(address: PciAddress): number | undefined {
    return this.devices[address];
  }

  protected parts(address: PciAddress) {
    const busMaster = () => `bus master ${this.busMaster(address) ? 'on' : 'off'}`;
    return {
      canReset: this.canReset,
      dma: acceptingDma(),
      reset: () => {
        this.calls.push(`${address} reset (${busMaster()})`);
        this.resets.set(address, (this.resets.get(address) ?? 0) + 1);
      },
      close: () => {
        this.calls.push(`${address} close (${busMaster()})`);
        this.closes.set(address, (this.closes.get(address) ?? 0) + 1);
      },
    };
  }
}

/**
 * The test driver: at attach turns bus mastering on and establishes INTx;
 * while running acks every interrupt, except as told: `crashAt` (throw on
 * the Nth interrupt: the host still takes an outside driver's throw as a
 * crash), `faultAt` (report a fault through DriverBus.fault at the Nth), `hangAt` (stop acking from the Nth), `rejectAt`
 * (an invoked promise rejects on the Nth); only in incarnations below
 * `faultyIncarnations`.
 */
const options = {
  crashAt: { type: 'integer', min: 1, doc: 'throw at the Nth interrupt' },
  faultAt: { type: 'integer', min: 1, doc: 'report a fault to the bus at the Nth interrupt' },
  hangAt: { type: 'integer', min: 1, doc: 'stop acking at the Nth interrupt' },
  rejectAt: { type: 'integer', min: 1, doc: 'reject a promise at the Nth interrupt' },
  faultyIncarnations: { type: 'integer', min: 0, default: 1, doc: 'incarnations that misbehave' },
  finishAt: { type: 'integer', min: 1, doc: 'reach a final state at the Nth interrupt' },
  dmaBytes: { type: 'integer', min: 1, doc: 'DMA memory to allocate at attach' },
} as const;

interface TestResources { readonly vector: DriverVector }
type In = DriverInput<{ crashAt?: number; faultAt?: number; hangAt?: number; rejectAt?: number; faultyIncarnations: number; finishAt?: number; dmaBytes?: number }, TestResources>;

const testMachine = setup({
  types: { input: {} as In, context: {} as In & { n: number }, events: {} as { type: 'irq'; event: InterruptEvent } },
  actors: {
    irqs: fromEventObservable(({ input }: { input: DriverVector }) => input.events.pipe(map((event) => ({ type: 'irq' as const, event })))),
    failing: fromPromise(async () => {
      throw new Error('rejected on purpose');
    }),
  },
  guards: {
    rejectNow: ({ context }) => context.bus.incarnation < context.options.faultyIncarnations && context.n + 1 === context.options.rejectAt,
    finishNow: ({ context }) => context.n + 1 === context.options.finishAt,
  },
}).createMachine({
  id: 'test',
  context: ({ input }) => ({ ...input, n: 0 }),
  invoke: { src: 'irqs', input: ({ context }) => context.resources.vector },
  initial: 'serving',
  states: {
    serving: {
      on: {
        irq: [
          { guard: 'rejectNow', target: 'rejecting' },
          { guard: 'finishNow', target: 'done' },
          {
            actions: [
              ({ context, event }) => {
                const n = context.n + 1;
                const faulty = context.bus.incarnation < context.options.faultyIncarnations;
                if (faulty && context.options.hangAt !== undefined && n >= context.options.hangAt) return;
                event.event.ack();
                if (faulty && n === context.options.crashAt) throw new Error(`crash at interrupt ${n}`);
                if (faulty && n === context.options.faultAt) context.bus.fault(new Error(`fault reported at interrupt ${n}`));
              },
              assign({ n: ({ context }) => context.n + 1 }),
              ({ context }) => context.bus.note(`interrupt ${context.n}`),
            ],
          },
        ],
      },
    },
    rejecting: { invoke: { src: 'failing' } },
    done: { type: 'final' },
  },
});

const testDriver = defineDriver({
  name: 'test',
  description: 'unit-test driver',
  match: [{ vendor: 0x1234, device: 0x0001 }],
  options,
  attach: (bus, options) => {
    const dma = bus.dma();
    if (options.dmaBytes !== undefined) dma.createTag({}).allocMemory(options.dmaBytes);
    dma.enableBusMaster();
    return { vector: bus.establishInterrupts({ type: 'intx' }).vectors[0]! };
  },
  machine: testMachine,
});

const registry = new Map([[testDriver.name, testDriver]]);

/** For the driver choice: one that does not fit device 0001, then two that do, the second with an option of its own. */
const also: AnyDriver = { ...testDriver, name: 'also', options: { ...options, alsoOnly: { type: 'integer', min: 0, doc: 'an option only this driver has' } } };
const choiceRegistry = new Map<string, AnyDriver>([
  ['other', { ...testDriver, name: 'other', match: [{ vendor: 0x1234, device: 0x0002 }] }],
  [testDriver.name, testDriver],
  [also.name, also],
]);
const A = '0000:00:04.0';
const B = '0000:00:05.0';

function config(devices: unknown[], extra: Record<string, unknown> = {}) {
  return parseHostConfig({ restart: { initialDelayMs: 10, maxDelayMs: 40, maxRestarts: 2 }, watchdogMs: 100, statsIntervalMs: 50, ...extra, devices }, registry);
}



const until = (what: string, predicate: () => boolean, ms = 5000): Promise<void> => untilWithin(what, predicate, ms);

test('a device actor goes claimed → attaching → running → detaching → released, and the device is closed with bus mastering off', async (t) => {
  const bench = new FakeBench({ [A]: 1 });
  const host = DriverHost.claim(config([{ address: A, driver: 'test' }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('running', () => states(events, A).includes('running'));
  t.true(bench.busMaster(A));
  const report = await host.shutdown();
  t.deepEqual(states(events, A), ['claimed', 'attaching', 'running', 'detaching', 'released']);
  t.deepEqual(bench.calls, [`${A} close (bus master off)`], 'bus mastering was off when the kernel got the device back');
  t.is(bench.closes.get(A), 1);
  t.false(report.forced);
  t.like(report.devices[0], { outcome: { kind: 'stopped' }, released: { how: 'close' } });
});

test('interrupts reach only their own device\'s driver', async (t) => {
  const bench = new FakeBench({ [A]: 1, [B]: 1 });
  const host = DriverHost.claim(config([{ address: A, driver: 'test' }, { address: B, driver: 'test' }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('both running', () => states(events, A).includes('running') && states(events, B).includes('running'));
  for (let i = 0; i < 5; i++) {
    bench.fire(A);
    await until(`A interrupt ${i + 1}`, () => host.interruptCount(A as PciAddress) === i + 1);
  }
  bench.fire(B);
  await until('B interrupt', () => host.interruptCount(B as PciAddress) === 1);
  t.is(host.interruptCount(A as PciAddress), 5);
  t.is(events.filter((e) => e.type === 'note' && e.address === B).length, 1);
  await host.shutdown();
});

test('a driver that throws is quiesced, reset by reopening (no kernel reset), restarted after the back-off, and works again; the other device is untouched', async (t) => {
  const bench = new FakeBench({ [A]: 1, [B]: 1 });
  const host = DriverHost.claim(config([{ address: A, driver: 'test', options: { crashAt: 2 } }, { address: B, driver: 'test' }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('running', () => states(events, A).includes('running') && states(events, B).includes('running'));
  bench.fire(A);
  await until('1', () => host.interruptCount(A as PciAddress) === 1);
  bench.fire(A);
  await until('restart', () => events.some((e) => e.type === 'restart'));
  const fault = events.find((e) => e.type === 'fault');
  t.like(fault, { address: A, fault: { kind: 'crash', message: 'crash at interrupt 2', incarnation: 0 } });
  t.like(events.find((e) => e.type === 'restart'), { address: A, attempt: 1, delayMs: 10, reset: 'reopen' });
  await until('running again', () => states(events, A).filter((s) => s === 'running').length === 2);
  t.deepEqual(states(events, A), ['claimed', 'attaching', 'running', 'failed', 'resetting', 'attaching', 'running']);
  t.is(bench.opens.get(A), 2, 'the reset was a close and reopen');
  t.true(bench.busMaster(A), 'the new incarnation attached again');
  bench.fire(A);
  await until('after restart', () => host.interruptCount(A as PciAddress) === 3);
  t.deepEqual(states(events, B), ['claimed', 'attaching', 'running']);
  await host.shutdown();
});

test('with a kernel reset available, the restart resets instead of reopening; detach resets before closing', async (t) => {
  const bench = new FakeBench({ [A]: 1 }, true);
  const host = DriverHost.claim(config([{ address: A, driver: 'test', options: { crashAt: 1 } }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('running', () => states(events, A).includes('running'));
  bench.fire(A);
  await until('running again', () => states(events, A).filter((s) => s === 'running').length === 2);
  t.like(events.find((e) => e.type === 'restart'), { reset: 'kernel-reset' });
  t.is(bench.opens.get(A), 1);
  const report = await host.shutdown();
  t.is(bench.resets.get(A), 2);
  t.like(report.devices[0], { released: { how: 'kernel-reset' } });
  // The detach's own calls, in order: quiesced (bus master off) before the reset, the reset before the close.
  t.deepEqual(bench.calls.slice(-2), [`${A} reset (bus master off)`, `${A} close (bus master off)`]);
});

test('a fault reported through the bus (DriverBus.fault, no throw) is a crash: the machine stops, the device is quiesced, reset and restarted', async (t) => {
  const bench = new FakeBench({ [A]: 1 });
  const host = DriverHost.claim(config([{ address: A, driver: 'test', options: { faultAt: 2 } }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('running', () => states(events, A).includes('running'));
  bench.fire(A);
  await until('1', () => host.interruptCount(A as PciAddress) === 1);
  bench.fire(A);
  await until('running again', () => states(events, A).filter((s) => s === 'running').length === 2);
  t.like(events.find((e) => e.type === 'fault'), { address: A, fault: { kind: 'crash', message: 'fault reported at interrupt 2', incarnation: 0 } });
  t.deepEqual(states(events, A), ['claimed', 'attaching', 'running', 'failed', 'resetting', 'attaching', 'running']);
  t.true(events.some((e) => e.type === 'note' && e.address === A && e.message === 'interrupt 2'), 'the machine carried on to the end of the transition that reported it');
  t.is(bench.opens.get(A), 2, 'the reset was a close and reopen');
  bench.fire(A);
  await until('after restart', () => host.interruptCount(A as PciAddress) === 3);
  t.is(events.filter((e) => e.type === 'fault').length, 1, 'one fault');
  await host.shutdown();
});

test('a rejected promise inside the driver is a crash too', async (t) => {
  const bench = new FakeBench({ [A]: 1 });
  const host = DriverHost.claim(config([{ address: A, driver: 'test', options: { rejectAt: 1 } }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('running', () => states(events, A).includes('running'));
  bench.fire(A);
  await until('fault', () => events.some((e) => e.type === 'fault'));
  t.like(events.find((e) => e.type === 'fault'), { fault: { kind: 'crash', message: 'rejected on purpose' } });
  await host.shutdown();
});

test('an INTx event not acked within watchdogMs fails the device: quiesced (bus master off, INTx disabled) and reported', async (t) => {
  const bench = new FakeBench({ [A]: 1 });
  const host = DriverHost.claim(config([{ address: A, driver: 'test', options: { hangAt: 1 } }], { restart: { maxRestarts: 0 } }), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('running', () => states(events, A).includes('running'));
  const firedAt = Date.now();
  bench.fire(A);
  await until('released', () => states(events, A).includes('released'));
  const fault = events.find((e) => e.type === 'fault');
  t.like(fault, { fault: { kind: 'watchdog' } });
  t.true(fault!.at - firedAt >= 90, `detected after ${fault!.at - firedAt} ms`);
  t.false(bench.busMaster(A));
  t.false(bench.intxFds.has(A));
  t.like(events.find((e) => e.type === 'released'), { outcome: { kind: 'gave-up', fault: { kind: 'watchdog' } } });
  await host.shutdown();
});

test('restarts back off (doubling, capped) and stop at maxRestarts: the device is then released', async (t) => {
  const bench = new FakeBench({ [A]: 1 });
  const host = DriverHost.claim(config([{ address: A, driver: 'test', options: { crashAt: 1, faultyIncarnations: 99 } }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  for (let i = 0; i < 3; i++) {
    await until(`running #${i}`, () => states(events, A).filter((s) => s === 'running').length === i + 1);
    bench.fire(A);
  }
  await until('released', () => states(events, A).includes('released'));
  t.deepEqual(events.flatMap((e) => (e.type === 'restart' ? [e.delayMs] : [])), [10, 20]);
  t.like(events.find((e) => e.type === 'released'), { outcome: { kind: 'gave-up' } });
  t.is(bench.closes.get(A), 3);
  await host.shutdown();
});

test('a driver reaching its final state detaches the device (outcome finished)', async (t) => {
  const bench = new FakeBench({ [A]: 1 });
  const host = DriverHost.claim(config([{ address: A, driver: 'test', options: { finishAt: 1 } }]), { registry, open: bench.open });
  const events = record(t, host);
  host.start();
  await until('running', () => states(events, A).includes('running'));
  bench.fire(A);
  const [out] = await within(5000, host.settled, 'the host never settled after the driver finished');
  t.like(out, { outcome: { kind: 'finished' } });
  await host.shutdown();
});

test('claiming is all or nothing: a device that cannot be opened fails the config naming its entry, and the others are closed again', (t) => {
  const bench = new FakeBench({ [A]: 1 });
  const err = t.throws(() => DriverHost.claim(config([{ address: A, driver: 'test' }, { address: B, driver: 'test' }]), { registry, open: bench.open }));
  t.regex(err!.message, /^devices\[1\]\.address: cannot claim 0000:00:05\.0/);
  t.is(bench.opens.get(A), 1);
  t.is(bench.closes.get(A), 1);
});

test('a driver that does not match the device is refused at claim, naming devices[i].driver', (t) => {
  const bench = new FakeBench({ [A]: 7 });
  const err = t.throws(() => DriverHost.claim(config([{ address: A, driver: 'test' }]), { registry, open: bench.open }), { instanceOf: ConfigError });
  t.regex(err!.message, /^devices\[0\]\.driver: "test" does not drive 0000:00:04\.0 \(1234:0007\)/);
  t.is(bench.closes.get(A), 1);
});

test('a device without a driver gets the first whose match table fits; its options are checked then', async (t) => {
  const bench = new FakeBench({ [A]: 1 });
  const claim = (device: Record<string, unknown>) => DriverHost.claim(config([{ address: A, ...device }]), { registry: choiceRegistry, open: bench.open });
  // Checked against the chosen driver's schema: "test" has no alsoOnly, a later match has.
  t.regex(t.throws(() => claim({ options: { alsoOnly: 1 } }))!.message, /^devices\[0\]\.options\.alsoOnly: unknown option/);
  t.regex(t.throws(() => claim({ options: { crashAt: 'x' } }))!.message, /^devices\[0\]\.options\.crashAt: expected integer, got "x"/);
  const host = claim({});
  const events = record(t, host);
  t.deepEqual(host.addresses, [parsePciAddress(A)]);
  host.start();
  await until('running', () => states(events, A).includes('running'));
  t.deepEqual([...new Set(events.flatMap((e) => (e.type === 'state' ? [e.driver] : [])))], ['test'], 'not "other" (no match), not "also" (a later match)');
  await host.shutdown();
});

test('the inspect option sees the host, device and driver actors', async (t) => {
  const bench = new FakeBench({ [A]: 1 });
  const seen: InspectionEvent[] = [];
  const host = DriverHost.claim(config([{ address: A, driver: 'test' }]), { registry, open: bench.open, inspect: (e) => seen.push(e) });
  const events = record(t, host);
  host.start();
  await until('running', () => states(events, A).includes('running'));
  await host.shutdown();
  const machines = new Set(seen.flatMap((e) => (e.type === '@xstate.snapshot' ? [(e.snapshot as { machine?: { id: string } }).machine?.id] : [])));
  for (const id of ['host', 'device', 'test']) t.true(machines.has(id), `snapshots of the ${id} machine are inspected`);
});

test('stats report interrupts, their rate over each interval and the DMA bytes mapped, per device', async (t) => {
  const bench = new FakeBench({ [A]: 1, [B]: 1 });
  const host = DriverHost.claim(config([{ address: A, driver: 'test', options: { dmaBytes: 3 * 4096 } }, { address: B, driver: 'test' }]), { registry, open: bench.open });
  const events = record(t, host);
  const stats = (address: string) => events.flatMap((e) => (e.type === 'stats' && e.address === address ? [e] : []));
  host.start();
  await until('running', () => states(events, A).includes('running') && states(events, B).includes('running'));
  const quietUntil = stats(A).length;
  for (let i = 1; i <= 3; i++) {
    bench.fire(A);
    await until(`${i}`, () => host.interruptCount(A as PciAddress) === i);
  }
  // Two intervals more: one that saw the interrupts, one that saw none.
  await until('two stats after the interrupts', () => stats(A).filter((s) => s.interrupts === 3).length >= 2, 5000);
  await host.shutdown();
  const a = stats(A);
  t.true(a.slice(0, quietUntil).every((s) => s.interrupts === 0 && s.interruptsPerSecond === 0));
  // Each rate is that interval's interrupts over its length (stamped in whole ms: allow 3 ms either way).
  for (let i = 1; i < a.length; i++) {
    const delta = a[i]!.interrupts - a[i - 1]!.interrupts;
    const ms = a[i]!.at - a[i - 1]!.at;
    const [low, high] = [Math.floor((delta * 1000) / (ms + 3)), Math.ceil((delta * 1000) / Math.max(1, ms - 3))];
    t.true(a[i]!.interruptsPerSecond >= low && a[i]!.interruptsPerSecond <= high, `interval ${i}: ${delta} interrupts in ~${ms} ms reported as ${a[i]!.interruptsPerSecond}/s`);
  }
  t.true(a.some((s) => s.interruptsPerSecond > 0), 'some interval saw the interrupts');
  t.is(a.at(-1)!.interruptsPerSecond, 0, 'the last interval saw none');
  t.true(a.every((s) => s.dmaBytesMapped === 3 * 4096), 'A has its 12 KiB of DMA memory mapped');
  t.true(stats(B).every((s) => s.interrupts === 0 && s.dmaBytesMapped === 0), 'B did nothing: no interrupts, no DMA');
});
