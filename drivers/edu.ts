/**
 * Driver for QEMU's `edu` teaching device (1234:11e8). At each attach it
 * checks liveness, computes a factorial and round-trips 1 KiB through its
 * DMA engine behind the IOMMU; while running it raises interrupts on itself
 * and services them (clear the device's status, then ack the event), which
 * gives the host a steady, checkable interrupt load.
 *
 * Registers (QEMU docs/specs/edu.rst): 0x00 id, 0x04 liveness (reads back
 * inverted), 0x08 factorial, 0x20 status (bit 0 computing), 0x24 interrupt
 * status, 0x60 raise, 0x64 ack, 0x80/0x88/0x90/0x98 DMA source, destination,
 * count, command (bit 0 run, bit 1 towards RAM).
 */
import { randomFillSync } from 'node:crypto';
import { map } from 'rxjs';
import { fromEventObservable, fromPromise, setup } from 'xstate';
import type { DriverDma, DmaMemory, LoadedDmaMap } from '../pci/bus-dma.js';
import { DmaSync } from '../pci/bus-dma.js';
import type { BusSpace } from '../pci/bus-space.js';
import type { InterruptEvent } from '../pci/intr.js';
import { defineDriver, type DriverBus, type DriverInput, type DriverVector, type OptionsOf } from './contract.js';
import { EDU } from './edu-registers.js';

/** Well inside edu's 4 KiB buffer: QEMU 7.2 aborts on a transfer ending exactly at its end. */
const DMA_CHECK_BYTES = 1024;
/** edu starts a DMA ~100 ms (virtual) after the command; TCG guests are slow. */
const DMA_TIMEOUT_MS = 20_000;

/** How long blockAfterInterrupts blocks. */
const BLOCK_MS = 10_000;

/** What leakAfterInterrupts keeps: reachable for ever, so no GC can take it back. */
const leaked: number[][] = [];

function injectFaults(ctx: EduContext): void {
  const { spinAfterInterrupts, leakAfterInterrupts, blockAfterInterrupts } = ctx.options;
  if (reached(ctx, spinAfterInterrupts) && ctx.resources.tally.serviced === spinAfterInterrupts) {
    ctx.bus.note(`fault injection: spinning forever at interrupt ${ctx.resources.tally.serviced}`);
    for (;;) { /* hung */ }
  }
  if (reached(ctx, blockAfterInterrupts) && ctx.resources.tally.serviced === blockAfterInterrupts) {
    ctx.bus.note(`fault injection: blocking for ${BLOCK_MS} ms at interrupt ${ctx.resources.tally.serviced}`);
    const end = Date.now() + BLOCK_MS;
    while (Date.now() < end) { /* blocked */ }
  }
  if (reached(ctx, leakAfterInterrupts) && ctx.resources.tally.serviced === leakAfterInterrupts) {
    ctx.bus.note(`fault injection: leaking memory from interrupt ${ctx.resources.tally.serviced}`);
    ctx.bus.timers().interval(10, () => leaked.push(new Array<number>(1 << 17).fill(leaked.length)));
  }
}

const options = {
  interrupt: { type: 'enum', values: ['msi', 'intx'], default: 'msi', doc: 'interrupt type to establish: "msi" or "intx"' },
  raiseIntervalMs: { type: 'integer', min: 0, max: 60_000, default: 10, doc: 'ms between the interrupts the driver raises on the device; 0 raises the next one as soon as the last is serviced (heavy load)' },
  dmaCheck: { type: 'boolean', default: true, doc: 'round-trip 1 KiB through edu\'s DMA engine at each attach' },
  failAfterInterrupts: {
    type: 'integer', min: 1,
    doc: 'test/fault injection: the interrupt handler throws at the Nth interrupt of the first incarnation (a transient bug: restarts run clean)',
  },
  spinAfterInterrupts: {
    type: 'integer', min: 1,
    doc: 'test/fault injection: at the Nth interrupt of the first incarnation the handler spins forever (for (;;) {}): only the host\'s heartbeat watchdog can stop it',
  },
  leakAfterInterrupts: {
    type: 'integer', min: 1,
    doc: 'test/fault injection: from the Nth interrupt of the first incarnation the driver allocates memory without bound (1 MB every 10 ms, all kept) until the host stops it at its heap limit',
  },
  blockAfterInterrupts: {
    type: 'integer', min: 1,
    doc: `test/fault injection: at the Nth interrupt of the first incarnation the handler blocks in a synchronous loop for ${BLOCK_MS / 1000} s, then carries on`,
  },
  hangInDetach: {
    type: 'enum', values: ['promise', 'block', 'spin'],
    doc: 'test/fault injection: the first incarnation\'s clean detach never ends: a promise never settled, its thread blocked (Atomics.wait), or spinning',
  },
  stopAckingAfter: {
    type: 'integer', min: 0,
    doc: 'test/fault injection: after N interrupts of the first incarnation the driver stops acking (neither the device nor the event); with "intx" the line stays masked and the host watchdog must catch it',
  },
} as const;

export type EduOptions = OptionsOf<typeof options>;

/**
 * This incarnation's interrupt accounting, noted when the host takes the
 * device back (a soak checks that every raise was serviced once). Kept with
 * the resources, not in the machine's context, because the release hook
 * runs outside the machine.
 */
export interface EduTally {
  /** Interrupts the driver raised on the device. */
  raised: number;
  /** Interrupts that were ours (IRQ_STATUS set) and were serviced. */
  serviced: number;
  /** Of those, serviced while no raise was outstanding: a duplicate or a stray. */
  outsideWindow: number;
  /** Events with IRQ_STATUS clear, refused as not ours. */
  notOurs: number;
}

export interface EduResources {
  readonly bar: BusSpace;
  readonly vector: DriverVector;
  readonly dma: DriverDma;
  readonly src: DmaMemory;
  readonly dst: DmaMemory;
  readonly srcMap: LoadedDmaMap;
  readonly dstMap: LoadedDmaMap;
  readonly tally: EduTally;
  /** Fault injection for this incarnation's clean detach (hangInDetach). */
  readonly hangInDetach: EduOptions['hangInDetach'];
}

function attach(bus: DriverBus, opts: EduOptions): EduResources {
  const bar = bus.mapBar(0);
  const id = bar.read4(EDU.ID);
  if (id !== EDU.ID_VALUE) throw new Error(`edu: id register reads 0x${id.toString(16)}, expected 0x${EDU.ID_VALUE.toString(16)}`);
  // A reopen is no reset for edu: undo what the device's last user may have left set, an
  // interrupt at the end of each factorial (the self-test computes one) and raised interrupts.
  bar.write4(EDU.STATUS, 0);
  bar.write4(EDU.IRQ_ACK, bar.read4(EDU.IRQ_STATUS));
  const dma = bus.dma();
  const tag = dma.createTag({ alignment: 4096, addressLimit: EDU.DMA_LIMIT, maxSegments: 1 });
  const src = tag.allocMemory(4096);
  const dst = tag.allocMemory(4096);
  const srcMap = tag.createMap().load(src);
  const dstMap = tag.createMap().load(dst);
  const vector = bus.establishInterrupts({ type: opts.interrupt }).vectors[0]!;
  const tally: EduTally = { raised: 0, serviced: 0, outsideWindow: 0, notOurs: 0 };
  bus.onRelease(() => bus.note(`interrupts: raised ${tally.raised}, serviced ${tally.serviced} (${tally.outsideWindow} outside a raise), ${tally.notOurs} not ours`));
  // Maps loaded, vector established: the device may master the bus (DMA, and MSI, a DMA write).
  dma.enableBusMaster();
  return { bar, vector, dma, src, dst, srcMap, dstMap, tally, hangInDetach: bus.incarnation === 0 ? opts.hangInDetach : undefined };
}

/** A clean detach has nothing to do for edu, unless told to never end (hangInDetach). */
function detach(bus: DriverBus, { hangInDetach }: EduResources): Promise<void> | void {
  if (hangInDetach === undefined) return;
  bus.note(`fault injection: the detach never ends (${hangInDetach})`);
  if (hangInDetach === 'promise') return new Promise<void>(() => {});
  for (;;) {
    // Asleep for good (block) or on the CPU for good (spin): only the host's bound on the detach ends either.
    if (hangInDetach === 'block') Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
  }
}

async function transfer(bus: DriverBus, bar: BusSpace, from: bigint, to: bigint, toRam: boolean): Promise<void> {
  bar.write8(EDU.DMA_SRC, from);
  bar.write8(EDU.DMA_DST, to);
  bar.write4(EDU.DMA_COUNT, DMA_CHECK_BYTES);
  bar.write4(EDU.DMA_CMD, EDU.DMA_RUN | (toRam ? EDU.DMA_TO_RAM : 0));
  const deadline = Date.now() + DMA_TIMEOUT_MS;
  while (bar.read4(EDU.DMA_CMD) & EDU.DMA_RUN) {
    if (Date.now() > deadline) throw new Error(`edu: DMA ${toRam ? 'to' : 'from'} RAM did not complete within ${DMA_TIMEOUT_MS} ms`);
    await bus.timers().sleep(2);
  }
}

async function selfTest({ bus, options: opts, resources: r }: DriverInput<EduOptions, EduResources>): Promise<void> {
  for (const value of [0x12345678, 0xa5a5a5a5]) {
    r.bar.write4(EDU.LIVENESS, value);
    const back = r.bar.read4(EDU.LIVENESS);
    if (back !== (~value >>> 0)) throw new Error(`edu: liveness wrote 0x${value.toString(16)}, read 0x${back.toString(16)}`);
  }
  r.bar.write4(EDU.FACTORIAL, 10);
  while (r.bar.read4(EDU.STATUS) & EDU.STATUS_COMPUTING) await bus.timers().sleep(1);
  const factorial = r.bar.read4(EDU.FACTORIAL);
  if (factorial !== 3628800) throw new Error(`edu: 10! computed as ${factorial}`);
  if (opts.dmaCheck) {
    const data = randomFillSync(new Uint8Array(DMA_CHECK_BYTES));
    new Uint8Array(r.src.buffer).set(data);
    r.srcMap.sync(DmaSync.PREWRITE, 0, DMA_CHECK_BYTES);
    await transfer(bus, r.bar, r.srcMap.segments[0]!.busAddress, EDU.BUFFER, false);
    r.srcMap.sync(DmaSync.POSTWRITE, 0, DMA_CHECK_BYTES);
    r.dstMap.sync(DmaSync.PREREAD, 0, DMA_CHECK_BYTES);
    await transfer(bus, r.bar, EDU.BUFFER, r.dstMap.segments[0]!.busAddress, true);
    r.dstMap.sync(DmaSync.POSTREAD, 0, DMA_CHECK_BYTES);
    const back = new Uint8Array(r.dst.buffer, 0, DMA_CHECK_BYTES);
    const bad = back.findIndex((b, i) => b !== data[i]);
    if (bad >= 0) throw new Error(`edu: DMA round trip differs at byte ${bad}`);
  }
  const iovas = [r.srcMap, r.dstMap].map((m) => `0x${m.segments[0]!.busAddress.toString(16)}`).join(' ');
  bus.note(`self-test passed (incarnation ${bus.incarnation}): liveness, 10! = ${factorial}${opts.dmaCheck ? `, DMA ${DMA_CHECK_BYTES} B round trip (bus addresses ${iovas})` : ''}`);
}

interface EduContext extends DriverInput<EduOptions, EduResources> {
}

/** `status`: edu's interrupt status, read by the stream as the event arrives (0: the interrupt is not ours). */
type EduEvent = { type: 'irq'; event: InterruptEvent; status: number };

/** Fault injection applies to the first incarnation only. */
const reached = (ctx: EduContext, limit: number | undefined) => ctx.bus.incarnation === 0 && limit !== undefined && ctx.resources.tally.serviced >= limit;

const machine = setup({
  types: {
    input: {} as DriverInput<EduOptions, EduResources>,
    context: {} as EduContext,
    events: {} as EduEvent,
  },
  actors: {
    selfTest: fromPromise<void, DriverInput<EduOptions, EduResources>>(({ input }) => selfTest(input)),
    interrupts: fromEventObservable(({ input }: { input: EduResources }) =>
      input.vector.events.pipe(map((event): EduEvent => ({ type: 'irq', event, status: input.bar.read4(EDU.IRQ_STATUS) })))),
  },
  delays: {
    raiseInterval: ({ context }) => context.options.raiseIntervalMs,
  },
  guards: {
    notOurs: ({ event }) => event.status === 0,
  },
  actions: {
    raise: ({ context }) => {
      context.resources.tally.raised++;
      context.resources.bar.write4(EDU.IRQ_RAISE, 1);
    },
    refuse: ({ context, event }) => {
      context.resources.tally.notOurs++;
      event.event.ack(false);
    },
    count: ({ context }) => void context.resources.tally.serviced++,
    countOutside: ({ context }) => void context.resources.tally.outsideWindow++,
    /** The interrupt handler proper: quiet the device, then ack the event (which unmasks INTx). */
    service: ({ context, event }) => {
      const { stopAckingAfter, failAfterInterrupts } = context.options;
      if (stopAckingAfter !== undefined && reached(context, stopAckingAfter + 1)) return;
      context.resources.bar.write4(EDU.IRQ_ACK, event.status);
      event.event.ack();
      if (reached(context, failAfterInterrupts)) context.bus.fault(new Error(`fault injection: failAfterInterrupts=${failAfterInterrupts} reached`));
      else injectFaults(context);
    },
  },
}).createMachine({
  id: 'edu',
  context: ({ input }) => input,
  initial: 'selfTest',
  states: {
    selfTest: {
      invoke: {
        src: 'selfTest',
        input: ({ context }) => context,
        onDone: 'serving',
        // A failed self-test is a driver failure: the host restarts it.
        onError: { actions: ({ context, event }) => context.bus.fault(event.error) },
      },
    },
    serving: {
      invoke: { src: 'interrupts', input: ({ context }) => context.resources },
      initial: 'pausing',
      states: {
        pausing: { after: { raiseInterval: 'raised' } },
        raised: {
          entry: 'raise',
          on: { irq: [{ guard: 'notOurs', actions: 'refuse' }, { target: 'pausing', actions: ['count', 'service'] }] },
        },
      },
      // An interrupt outside the raise window is serviced too (or refused as not ours).
      on: { irq: [{ guard: 'notOurs', actions: 'refuse' }, { actions: ['count', 'countOutside', 'service'] }] },
    },
  },
});

export const eduDriver = defineDriver({
  name: 'edu',
  description: 'QEMU edu: liveness, factorial, DMA check, self-raised interrupt load',
  match: [{ vendor: 0x1234, device: 0x11e8 }],
  options,
  attach,
  detach,
  machine,
});
