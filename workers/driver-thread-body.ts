/**
 * The worker thread of one driver incarnation (started by DriverThread in
 * actors/driver-thread.ts): takes up the device the main thread holds
 * (PciDevice.adopt: the same kernel handles, the BARs the main thread
 * mapped), imports the driver, runs its attach and its XState machine here,
 * with its interrupts polled by this thread's own event loop. The heartbeat
 * that loop advances, and the ledger of what the driver holds, are in shared
 * memory: the main thread supervises through them, not through this thread.
 * The services the driver provides and consumes go through this thread's
 * own link to the main thread's registry (services/service.ts).
 */
import { getHeapStatistics } from 'node:v8';
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { UpciError, type UpciErrorCode } from '../kernel/errors.js';
import { PciDevice, type SharedDevice } from '../pci/device.js';
import { adoptingPort } from '../pci/kernel-port.js';
import type { KernelPort } from '../kernel/port.js';
import { installFdLedger } from '../kernel/interrupt-watcher.js';
import type { BusDma } from '../pci/bus-dma.js';
import type { InterruptType } from '../pci/intr.js';
import { AttachedBus, type BusMeter } from './driver-bus.js';
import { DriverLedger, oldGenerationBytes } from './driver-ledger.js';
import { currentThreadId } from '../kernel/thread-wait.js';
import { importDriver, type DriverSource } from './driver-import.js';
import { cleanDetach } from './phase-bounds.js';
import { runDriverMachine, type RunningMachine } from './driver-run.js';
import type { AnyDriver } from '../drivers/contract.js';
import { ThreadServices } from '../services/service.js';

export interface DriverThreadData {
  readonly device: SharedDevice;
  readonly source: DriverSource;
  readonly options: unknown;
  readonly incarnation: number;
  readonly watchdogMs: number;
  readonly heartbeatMs: number;
  readonly detachTimeoutMs: number;
  readonly name: string;
  readonly ledger: SharedArrayBuffer;
  /** This thread's link to the main thread's service registry (transferred). */
  readonly services: MessagePort;
}

/** What the worker tells the main thread. */
export type ThreadMessage =
  /** Every module this thread needs is loaded (the native addons among them). */
  | { readonly type: 'ready' }
  | { readonly type: 'attached' }
  /** `code`: an UpciError's, which decides whether a restart can help (NOT_OFFERED cannot). */
  | { readonly type: 'attach-failed'; readonly message: string; readonly code?: UpciErrorCode }
  | { readonly type: 'note'; readonly message: string }
  | { readonly type: 'stall'; readonly vector: number; readonly waitedMs: number }
  | { readonly type: 'finished' }
  | { readonly type: 'crashed'; readonly message: string }
  /** After a 'stop': the driver detached and released what it held, here (error: a step that failed). */
  | { readonly type: 'released'; readonly error?: string };

/** What the main thread tells the worker. */
export type HostMessage = { readonly type: 'stop' };

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

function run(data: DriverThreadData, kernel: KernelPort): void {
  const port = parentPort!;
  const post = (m: ThreadMessage) => port.postMessage(m);
  post({ type: 'ready' });
  const ledger = DriverLedger.of(data.ledger);
  ledger.tid = currentThreadId();
  installFdLedger(ledger.fds);
  const meter: BusMeter & { dma: BusDma | undefined } = {
    countInterrupts: (n) => ledger.countInterrupts(n),
    dma: undefined,
    get irqKind(): InterruptType | undefined {
      return ledger.irqKind;
    },
    set irqKind(kind: InterruptType | undefined) {
      ledger.irqKind = kind;
    },
  };
  const beat = () => {
    const heap = getHeapStatistics();
    ledger.beat(heap.used_heap_size, heap.heap_size_limit, meter.dma?.bytesMapped ?? 0, oldGenerationBytes());
  };
  beat();
  const heartbeat = setInterval(beat, data.heartbeatMs);
  const device = PciDevice.adopt(data.device, { port: kernel });
  const bus = new AttachedBus(device, data.incarnation, {
    name: data.name,
    services: new ThreadServices(data.services),
    watchdogMs: data.watchdogMs,
    meter,
    onStall: (vector, waitedMs) => post({ type: 'stall', vector, waitedMs }),
    onNote: (note) => post({ type: 'note', message: note }),
  });
  let machine: RunningMachine | undefined;
  let attached: { driver: AnyDriver; resources: unknown } | undefined;
  let stopped = false;

  port.on('message', async (m: HostMessage) => {
    if (m.type !== 'stop' || stopped) return;
    stopped = true;
    machine?.stop();
    if (attached?.driver.detach !== undefined) {
      const { driver, resources } = attached;
      await cleanDetach(driver, data.detachTimeoutMs, () => driver.detach!(bus, resources), (note) => post({ type: 'note', message: note }));
    }
    let error: string | undefined;
    try {
      bus.release();
    } catch (e) {
      error = message(e);
    } finally {
      device.close();
      clearInterval(heartbeat);
    }
    post(error === undefined ? { type: 'released' } : { type: 'released', error });
    port.close();
  });

  void (async () => {
    let resources: unknown;
    let driver: AnyDriver;
    try {
      driver = await importDriver(data.source);
      resources = await bus.attaching(() => driver.attach(bus, data.options as never));
    } catch (e) {
      post({ type: 'attach-failed', message: message(e), ...(e instanceof UpciError ? { code: e.code } : {}) });
      return;
    }
    if (stopped) return;
    attached = { driver, resources };
    post({ type: 'attached' });
    machine = runDriverMachine(driver, bus, data.options, resources);
    machine.ended.then(() => post({ type: 'finished' }), (e: unknown) => post({ type: 'crashed', message: message(e) }));
  })();
}

const data = workerData as DriverThreadData;
// The port is a module like any other this thread loads before it says it is ready.
run(data, await adoptingPort(data.device.handles));
