/**
 * Driver for QEMU's `pci-testdev` (1b36:0005): checks port I/O through the
 * kernel (no iopl) by driving test 0, "portio-no-eventfd", of its I/O BAR:
 * each 1-byte write of the test's data byte to the test's port counts one
 * (QEMU hw/misc/pci-testdev.c). The device has no interrupts; the driver
 * repeats the counter check on a timer (XState's, stopped with its machine)
 * and reports a wrong count as its fault (DriverBus.fault).
 *
 * I/O BAR layout per test: 0x00 select test (write), 0x04 target port,
 * 0x08 data byte, 0x0c count, 0x10 the test's name.
 */
import { assign, setup } from 'xstate';
import type { BusSpace } from '../pci/bus-space.js';
import { defineDriver, type DriverBus, type DriverInput, type OptionsOf } from './contract.js';

const TEST = 0x00;
const TARGET = 0x04;
const DATA = 0x08;
const COUNT = 0x0c;
const NAME = 0x10;
const PORTIO_TEST = 'portio-no-eventfd';
const WRITES_PER_CHECK = 5;

const options = {
  checkIntervalMs: { type: 'integer', min: 1, max: 3_600_000, default: 500, doc: 'ms between I/O port counter checks' },
  noteEvery: { type: 'integer', min: 1, max: 1_000_000, default: 100, doc: 'note the first check and then every Nth, with the device\'s count and when (Date.now() in the driver\'s thread)' },
} as const;

export type TestdevOptions = OptionsOf<typeof options>;

export interface TestdevResources {
  readonly ports: BusSpace;
}

function attach(bus: DriverBus): TestdevResources {
  const io = bus.bars().find((b) => b.type === 'io');
  if (io === undefined) throw new Error('pci-testdev: no I/O-port BAR');
  const ports = bus.mapBar(io.index);
  ports.write1(TEST, 0);
  const name = Buffer.from(ports.readRegion(1, NAME, PORTIO_TEST.length)).toString('latin1');
  if (name !== PORTIO_TEST) throw new Error(`pci-testdev: test 0 is "${name}", expected "${PORTIO_TEST}"`);
  return { ports };
}

/** One check: WRITES_PER_CHECK counted writes and one with wrong data, which must not count. */
function counterCheck(ports: BusSpace): number {
  const target = ports.read4(TARGET);
  const data = ports.read1(DATA);
  const before = ports.read4(COUNT);
  for (let i = 0; i < WRITES_PER_CHECK; i++) ports.write1(target, data);
  ports.write1(target, data ^ 0xff);
  const after = ports.read4(COUNT);
  if (after !== ((before + WRITES_PER_CHECK) >>> 0)) throw new Error(`pci-testdev: counter went ${before} → ${after} after ${WRITES_PER_CHECK} writes`);
  return after;
}

interface TestdevContext extends DriverInput<TestdevOptions, TestdevResources> {
  readonly checks: number;
}

const machine = setup({
  types: {
    input: {} as DriverInput<TestdevOptions, TestdevResources>,
    context: {} as TestdevContext,
  },
  delays: {
    checkInterval: ({ context }) => context.options.checkIntervalMs,
  },
  actions: {
    check: ({ context }) => {
      let count: number;
      try {
        count = counterCheck(context.resources.ports);
      } catch (e) {
        // A wrong count is the driver's fault, reported once through the bus (no action throws).
        context.bus.fault(e);
        return;
      }
      // The first check and then every noteEvery-th: enough to see it working without flooding the event stream.
      if ((context.checks - 1) % context.options.noteEvery === 0) context.bus.note(`port I/O counter check #${context.checks} ok (count ${count}) at ${Date.now()}`);
    },
  },
}).createMachine({
  id: 'pci-testdev',
  context: ({ input }) => ({ ...input, checks: 0 }),
  initial: 'checking',
  states: {
    checking: {
      after: {
        checkInterval: { target: 'checking', reenter: true, actions: [assign({ checks: ({ context }) => context.checks + 1 }), 'check'] },
      },
    },
  },
});

export const pciTestdevDriver = defineDriver({
  name: 'pci-testdev',
  description: 'QEMU pci-testdev: I/O-port counter checks through the kernel',
  match: [{ vendor: 0x1b36, device: 0x0005 }],
  options,
  attach,
  machine,
});
