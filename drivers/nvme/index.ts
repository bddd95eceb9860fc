/**
 * NVMe driver (class 01:08:02, NVM Express): the controller's namespaces as
 * block devices. attach resets and enables the controller, runs Identify,
 * creates the I/O queue pairs and publishes one block device per active
 * namespace (named after the config entry: "<name>n<nsid>"); the machine
 * reaps completions (interrupts, or polling: kit/poller.ts), watches command
 * timeouts on the bus's timers, and reports a throw while reaping to the
 * bus's fault funnel: a driver crash the host supervises.
 * Detach shuts the controller down (CC.SHN) before the host quiesces it.
 */
import { fromCallback } from 'xstate';
import type { BusSpace } from '../../pci/bus-space.js';
import { defineDriver, type DriverBus, type DriverInterrupts, type OptionsOf } from '../contract.js';
import { serveInterrupts } from '../kit/vectors.js';
import type { DriverTimers } from '../kit/timers.js';
import { servingMachine, type DriverFault } from '../serving-machine.js';
import { NvmeController } from './controller.js';
import { IoQueues, NvmeNamespace } from './namespace.js';
import { PAGE, PRPS_PER_PAGE } from './registers.js';

const options = {
  ioQueues: { type: 'integer', min: 1, max: 64, default: 2, doc: 'I/O queue pairs to create (the controller may grant fewer)' },
  queueDepth: { type: 'integer', min: 2, max: 4096, default: 64, doc: 'entries per I/O queue (depth - 1 commands outstanding per queue)' },
  maxTransferKiB: { type: 'integer', min: 4, max: 2048, default: 128, doc: 'largest transfer of one command (also capped by the controller\'s MDTS); larger requests are split' },
  interrupt: { type: 'enum', values: ['best', 'msix', 'msi', 'intx'], default: 'best', doc: 'interrupt type: "best" is one MSI-X vector per queue, else MSI, else INTx' },
  polled: { type: 'boolean', default: false, doc: 'reap completions by polling instead of interrupts (the CQs are created without interrupts)' },
  commandTimeoutMs: { type: 'integer', min: 10, max: 600_000, default: 30_000, doc: 'a command not completed within this is aborted; still not, the controller is reset and the command submitted again; that not completed in time either, a second reset fails it with NvmeTimeoutError' },
  failAfterCompletions: { type: 'integer', min: 1, doc: 'test/fault injection: the first incarnation\'s completion handler throws at the Nth I/O completion' },
  dropSubmission: {
    type: 'integer', min: 1,
    doc: 'test/fault injection: the first incarnation\'s Nth I/O command is recorded but never reaches the submission queue (as if its doorbell write were lost), so only the timeout path (Abort, controller reset, re-issue) completes it',
  },
  dropResubmissions: { type: 'boolean', default: false, doc: 'test/fault injection: with dropSubmission, the dropped command\'s re-issues are dropped too, so it must fail with NvmeTimeoutError' },
  dropAdminSubmission: {
    type: 'integer', min: 1,
    doc: 'test/fault injection: the first incarnation\'s Nth admin command after attach (Aborts and the commands of a controller reset) never reaches the admin queue',
  },
} as const;

export type NvmeOptions = OptionsOf<typeof options>;

export interface NvmeResources {
  readonly bar: BusSpace;
  readonly controller: NvmeController;
  readonly io: IoQueues;
  readonly namespaces: readonly NvmeNamespace[];
  readonly interrupts: DriverInterrupts | undefined;
  /** The bus's timers: the timeout check's interval is this incarnation's. */
  readonly timers: DriverTimers;
}

async function attach(bus: DriverBus, opts: NvmeOptions): Promise<NvmeResources> {
  const bar = bus.mapBar(0);
  const dma = bus.dma();
  let interrupts: DriverInterrupts | undefined;
  if (!opts.polled) {
    const msix = opts.interrupt === 'best' || opts.interrupt === 'msix';
    const wanted = opts.ioQueues + 1;
    try {
      interrupts = bus.establishInterrupts(msix ? { type: 'msix', vectors: wanted } : { type: opts.interrupt as 'msi' | 'intx' });
    } catch (e) {
      if (opts.interrupt !== 'best') throw e;
      // Fewer MSI-X vectors than queues (or none): share one vector, MSI or INTx, as pci_intr_alloc would pick.
      interrupts = bus.establishInterrupts({ type: 'best', vectors: 1 });
    }
  }
  const controller = new NvmeController(bar, dma, { ...opts, adminDepth: 32, vectors: interrupts?.vectors.length ?? 0 }, { note: (message) => bus.note(message), fault: (e) => bus.fault(e), timers: bus.timers(), vectors: interrupts?.vectors ?? [] });
  let io: IoQueues | undefined;
  // Whatever is in flight when the host takes the device back fails at once, and nothing new is submitted.
  bus.onRelease(() => {
    const reason = 'the driver was detached or failed; the host reclaimed the controller';
    if (io !== undefined) io.abandon(reason);
    else controller.abandon(reason);
  });
  await controller.start();
  const mdts = controller.identity.maxTransferBytes;
  const chunkBytes = Math.min(opts.maxTransferKiB * 1024, mdts === 0 ? Infinity : mdts, PRPS_PER_PAGE * PAGE);
  io = new IoQueues(controller, chunkBytes);
  if (bus.incarnation === 0) {
    io.failAt = opts.failAfterCompletions;
    controller.dropSubmission = opts.dropSubmission ?? 0;
    controller.dropResubmissions = opts.dropResubmissions;
  }
  const namespaces: NvmeNamespace[] = [];
  for (const nsid of controller.namespaceIds) {
    const identity = await controller.identifyNamespace(nsid);
    if (identity.metadataSize !== 0 || identity.blocks === 0) {
      bus.note(`namespace ${nsid} skipped: ${identity.metadataSize !== 0 ? `${identity.metadataSize} metadata bytes per block` : 'size 0'}`);
      continue;
    }
    const ns = new NvmeNamespace(io, nsid, identity, `${bus.name}n${nsid}`);
    namespaces.push(ns);
    bus.provideBlockDevice(ns);
  }
  // Counted from here: the admin commands of attach are not.
  if (bus.incarnation === 0) controller.dropAdminSubmission = opts.dropAdminSubmission ?? 0;
  const { model, serial, firmware } = controller.identity;
  bus.note(`${model} (serial ${serial}, firmware ${firmware}): ${controller.ioQueues.length} I/O queue(s) of ${controller.ioQueues[0]?.depth}, ${interrupts === undefined ? 'polled' : `${interrupts.vectors.length} ${interrupts.type} vector(s)`}, namespaces ${namespaces.map((n) => `${n.nsid} (${n.blockCount} × ${n.blockSize} B)`).join(', ') || 'none'}`);
  return { bar, controller, io, namespaces, interrupts, timers: bus.timers() };
}

/** Clean detach: fail what is outstanding, then CC.SHN so the controller flushes and stops. */
async function detach(_bus: DriverBus, r: NvmeResources): Promise<void> {
  r.io.abandon('the driver is detaching');
  await r.controller.shutdown();
}

/** Reaps completions on interrupts (the polled queues reap themselves: controller.ts) and checks timeouts; a throw becomes a fault event. */
const service = fromCallback<DriverFault, NvmeResources>(({ input: r, sendBack }) => {
  const fault = (error: unknown) => sendBack({ type: 'fault', error });
  const unsubscribe = serveInterrupts(r.interrupts?.vectors ?? [], (vector) => r.controller.onInterrupt(vector), fault);
  r.controller.interruptsStarted();
  const timer = r.timers.interval(r.controller.timeoutCheckMs, () => {
    try {
      r.controller.checkTimeouts(performance.now());
    } catch (e) {
      fault(e);
    }
  });
  return () => {
    timer.cancel();
    unsubscribe();
  };
});

const machine = servingMachine<NvmeOptions, NvmeResources>('nvme', service);

export const nvmeDriver = defineDriver({
  name: 'nvme',
  description: 'NVM Express controller: namespaces as block devices',
  match: [{ classCode: 0x010802 }],
  options,
  attach,
  detach,
  machine,
});
