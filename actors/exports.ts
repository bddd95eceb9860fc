/**
 * The host's exports (the config's "exports", actors/export-config.ts):
 * each is opened once its provider's driver provides the service, kept
 * while the provider is restarted under it, and removed at shutdown (the
 * NBD socket file gone, the TAP interface deleted). Each step is an
 * 'export' event.
 *
 * Across a supervised restart the OS keeps what it holds: the ublk disk's
 * queue runs beside the provider, in its driver's thread (no thread hop per
 * request), and each incarnation takes the disk over through ublk's user
 * recovery, the kernel holding and then re-issuing what the last one did
 * not answer; so does the next `upci run` after the host died. The NBD
 * export runs in a thread of its own, on rings straight to the provider's
 * thread, and serves a FollowingBlockDevice (requests the old incarnation
 * did not finish wait for the next and are issued to it again); the TAP export
 * binds to the packet port, which outlives incarnations (while none is
 * attached the kernel's frames wait in the TAP's queue).
 *
 * A new kind of export is an opener in OPENERS (the compiler asks for one
 * per kind of ExportEntry).
 */
import { createHash } from 'node:crypto';
import { rmSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { UpciError } from '../kernel/errors.js';
import type { PciAddress } from '../kernel/pci-address.js';
import type { HostEvent } from './events.js';
import type { ExportEntry, ExportKindName, NbdExportEntry, TapExportEntry, UblkExportEntry } from './export-config.js';
import { firstProvided as firstProvidedUntil } from '../exports/first-provided.js';
import type { FromNbdThread, NbdThreadData, ToNbdThread } from '../exports/nbd-export-thread.js';
import type { ServiceLink } from '../services/service-registry.js';
import type { TapBesideSetup, ToTapBeside } from '../exports/tap-export.js';
import { openTap, type Tap } from '../kernel/linux/tap.js';
import { parseMac } from '../drivers/packet.js';
import type { BesideHandle, BesideTask } from '../services/service.js';
import { UblkControl, UblkDisk } from '../exports/ublk-control.js';
import type { FromUblkQueue, ToUblkQueue, UblkBesideSetup } from '../exports/ublk-queue.js';

/** What the exports need of the host. */
export interface ExportHost {
  /** A link to the host's services for a thread of an export's own (ServiceRegistry.link). */
  serviceLink(label: string): ServiceLink;
  /** Runs `task` beside the block device `name`'s provider, in its thread, waiting up to timeoutMs for one. */
  besideBlockDevice<A, R>(name: string, task: BesideTask<A>, timeoutMs: number): Promise<BesideHandle<R>>;
  /** Runs `task` beside the packet port `name`'s provider, in its thread, waiting up to timeoutMs for one. */
  besidePacketPort<A, R>(name: string, task: BesideTask<A>, timeoutMs: number): Promise<BesideHandle<R>>;
  emit(event: HostEvent): void;
}

export type ExportPhase = Extract<HostEvent, { type: 'export' }>['phase'];

/** An opened export. */
interface Opened {
  /** What the event says it is (size, address...). */
  readonly detail: string;
  /** Its provider was given up (released for good): what waits for a next incarnation fails now. */
  providerGone(reason: string): void;
  /** Removes it: the part the OS sees (socket file, interface) synchronously, so a forced stop leaves none. */
  close(): Promise<void>;
}

interface OpenContext {
  readonly host: ExportHost;
  /** Resolves when the host stops: an opener still waiting for its provider gives up. */
  readonly stopped: Promise<void>;
  /** Reports a step of this export. */
  note(phase: ExportPhase, detail: string): void;
}

interface Opener<E extends ExportEntry> {
  /** Where the OS finds it (a socket path, an interface name). */
  target(entry: E): string;
  /** Opens it once its provider provides; undefined when the host stopped first. */
  open(entry: E, context: OpenContext): Promise<Opened | undefined>;
}

/**
 * How long a request waits for the provider's next incarnation: longer than
 * a restart takes (a driver thread's load, 5-18 s in the TCG guest, plus the
 * back-off); a provider given up fails its waiting requests at once instead.
 */
const FOLLOW_WAIT_MS = 120_000;
/** Requests that wait for a next incarnation at once, per export (the kernel's nbd client sends at most 128 per connection by default). */
const MAX_WAITING = 1024;
/** How long an NBD export's thread may take to close its connections before it is ended. */
const NBD_CLOSE_MS = 5_000;

/** What `ask` gives once the entry's provider provides; undefined when the host stopped first (first-provided.ts). */
const firstProvided = <T>(context: OpenContext, ask: (timeoutMs: number) => Promise<T>): Promise<T | undefined> =>
  firstProvidedUntil(context.stopped, ask);

/** The queue of a ublk disk, served beside its block device (exports/ublk-queue.ts serveBeside). */
const UBLK_QUEUE: BesideTask<undefined> = { module: new URL('../exports/ublk-queue.js', import.meta.url).href, args: undefined };

/** The tag a config's ublk export puts on its disk, so that the next `upci run` of it takes the disk over. */
const ublkTag = (entry: UblkExportEntry): bigint =>
  createHash('sha256').update(`upci ublk ${entry.address} ${entry.service}`).digest().readBigUInt64LE(0) | 1n;

/** Starts the disk's queue beside its device: resolves once it has fetched every tag. */
async function startQueue(handle: BesideHandle<UblkBesideSetup>, disk: UblkDisk): Promise<boolean> {
  const { port } = handle.setup;
  const answer = new Promise<FromUblkQueue>((resolve) => port.once('message', resolve));
  port.postMessage({ type: 'start', options: { id: disk.id, queueDepth: disk.queueDepth, maxIoBytes: disk.maxIoBytes } } satisfies ToUblkQueue);
  const reply = await Promise.race([answer, handle.gone.then((reason) => ({ type: 'failed', message: reason }) as const)]);
  if (reply.type === 'failed') throw new UpciError('KERNEL', `the queue of ${disk.path} could not start: ${reply.message}`, 'see the kernel log (dmesg) for ublk_drv\'s reason');
  return reply.zeroCopy;
}

/**
 * Runs a beside task for each next incarnation of the provider after
 * `first`'s: when the one serving ends, `ask` waits for the next and
 * `take(next, n)` hands the export over to it. Ends at stop() or when no
 * next incarnation will come; `current` is the task serving now.
 */
function followIncarnations<S>(
  context: OpenContext,
  first: BesideHandle<S>,
  ask: (timeoutMs: number) => Promise<BesideHandle<S>>,
  take: (next: BesideHandle<S>, incarnation: number, lastEnd: string) => Promise<void>,
): { readonly current: BesideHandle<S>; stop(): void } {
  let current = first;
  let stopped = false;
  const follow = async (incarnation: number): Promise<void> => {
    const lastEnd = await current.gone;
    if (stopped) return;
    const next = await firstProvided(context, ask).catch(() => undefined);
    if (next === undefined || stopped) {
      next?.stop();
      return;
    }
    current = next;
    try {
      await take(next, incarnation, lastEnd);
    } catch (e) {
      context.note('failed', `incarnation ${incarnation} of its driver could not take the export over: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    void follow(incarnation + 1);
  };
  void follow(2);
  return {
    get current() {
      return current;
    },
    stop: () => {
      stopped = true;
    },
  };
}

const ublk: Opener<UblkExportEntry> = {
  target: (entry) => (entry.id === undefined ? '/dev/ublkb (the kernel\'s next number)' : `/dev/ublkb${entry.id}`),
  async open(entry, context) {
    const beside = (ms: number) => context.host.besideBlockDevice<undefined, UblkBesideSetup>(entry.service, UBLK_QUEUE, ms);
    const first = await firstProvided(context, beside);
    if (first === undefined) return undefined;
    const { geometry } = first.setup;
    const control = new UblkControl();
    let disk: UblkDisk;
    let zeroCopy: boolean;
    try {
      const found = await UblkDisk.find(control, ublkTag(entry), geometry, entry.id);
      if (found !== undefined) {
        // The disk of this export outlived the host that served it: take it over.
        context.note('followed', `${found.path} was left by a host that died; taking it over`);
        // A host that died with every tag in flight is noticed only at the kernel's request timeout (30 s by default).
        await found.startRecovery(() => new Promise((resolve) => setTimeout(resolve, 100)), 400);
        zeroCopy = await startQueue(first, found);
        await found.endRecovery();
        disk = found;
      } else {
        disk = await UblkDisk.add(control, geometry, { ...(entry.id === undefined ? {} : { id: entry.id }), queueDepth: entry.queueDepth, tag: ublkTag(entry) });
        try {
          zeroCopy = await startQueue(first, disk);
          await disk.start();
        } catch (e) {
          first.stop();
          await disk.stop().catch(() => undefined);
          await disk.delete().catch(() => undefined);
          throw e;
        }
      }
    } catch (e) {
      first.stop();
      control.close();
      throw e;
    }
    const following = followIncarnations(context, first, beside, async (next, incarnation, lastEnd) => {
      // The old queue's thread let go of /dev/ublkcN (it stopped, or ended); the kernel may take a moment.
      await disk.startRecovery(() => new Promise((resolve) => setTimeout(resolve, 20)), 250);
      await startQueue(next, disk);
      await disk.endRecovery();
      context.note('followed', `incarnation ${incarnation} of its driver took ${disk.path} over (the last one: ${lastEnd})`);
    });
    return {
      detail: `${disk.path}: ${geometry.blockCount} blocks of ${geometry.blockSize} B, queue depth ${disk.queueDepth}, served in its driver's thread${zeroCopy ? ' on registered memory' : ''}`,
      // No incarnation will take the disk over: stopping it fails what the kernel holds for it (EIO) now, not never.
      providerGone: () => {
        following.stop();
        void disk.stop().catch(() => undefined);
      },
      close: async () => {
        following.stop();
        try {
          await disk.stop();
        } finally {
          following.current.stop();
          try {
            await disk.delete();
          } finally {
            control.close();
          }
        }
      },
    };
  },
};

const NBD_THREAD = new URL('../exports/nbd-export-thread.js', import.meta.url);

/** The NBD export's thread's next message of one of `types`, or why it ended first. */
function fromNbdThread<T extends FromNbdThread['type']>(worker: Worker, types: readonly T[]): Promise<Extract<FromNbdThread, { type: T }> | { type: 'ended'; message: string }> {
  return new Promise((resolve) => {
    const onMessage = (m: FromNbdThread) => {
      if (!(types as readonly string[]).includes(m.type)) return;
      off();
      resolve(m as Extract<FromNbdThread, { type: T }>);
    };
    const onError = (e: Error) => {
      off();
      resolve({ type: 'ended', message: e.message });
    };
    const onExit = (code: number) => {
      off();
      resolve({ type: 'ended', message: `its thread exited (code ${code})` });
    };
    const off = () => worker.off('message', onMessage).off('error', onError).off('exit', onExit);
    worker.on('message', onMessage).once('error', onError).once('exit', onExit);
  });
}

/**
 * The NBD export runs in a thread of its own (exports/nbd-export-thread.ts), its block device straight from the
 * provider's thread: it waits there for the provider, follows its incarnations and reports each.
 */
const nbd: Opener<NbdExportEntry> = {
  target: (entry) => entry.socket,
  async open(entry, context) {
    const link = context.host.serviceLink(`the NBD export of ${entry.service}`);
    const data: NbdThreadData = { link: link.port, service: entry.service, socket: entry.socket, mode: entry.mode, waitMs: FOLLOW_WAIT_MS, maxWaiting: MAX_WAITING };
    const worker = new Worker(NBD_THREAD, { workerData: data, transferList: [link.port] });
    const end = async (reason: string) => {
      await worker.terminate();
      link.close(reason);
    };
    worker.on('message', (m: FromNbdThread) => {
      if (m.type === 'followed') context.note('followed', m.detail);
    });
    const first = await Promise.race([fromNbdThread(worker, ['open', 'failed']), context.stopped.then(() => undefined)]);
    if (first === undefined) {
      await end('the host stopped');
      return undefined;
    }
    if (first.type !== 'open') {
      await end('the export failed');
      // The thread's message is the whole error, its fix included.
      throw new Error(first.message);
    }
    const tell = (m: ToNbdThread) => worker.postMessage(m);
    return {
      detail: first.detail,
      providerGone: (reason) => tell({ type: 'gone', reason }),
      close: async () => {
        rmSync(entry.socket, { force: true });
        const closed = fromNbdThread(worker, ['closed']);
        tell({ type: 'close' });
        await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, NBD_CLOSE_MS).unref())]);
        await end('the export was closed');
      },
    };
  },
};

/** The TAP export, served beside its NIC (exports/tap-export.ts serveBeside). */
const tapTask = (entry: TapExportEntry): BesideTask<{ portName: string }> => ({ module: new URL('../exports/tap-export.js', import.meta.url).href, args: { portName: entry.service } });

const tap: Opener<TapExportEntry> = {
  target: (entry) => entry.ifname,
  async open(entry, context) {
    const beside = (ms: number) => context.host.besidePacketPort<{ portName: string }, TapBesideSetup>(entry.service, tapTask(entry), ms);
    const first = await firstProvided(context, beside);
    if (first === undefined) return undefined;
    // The host holds the interface: it stays while the driver restarts (frames wait in its queue), each incarnation serves it.
    let device: Tap;
    try {
      device = openTap(entry.ifname, parseMac(first.setup.mac));
      device.up();
    } catch (e) {
      first.stop();
      throw e;
    }
    const serve = (handle: BesideHandle<TapBesideSetup>) => handle.setup.port.postMessage({ type: 'serve', fd: device.fd, name: device.name } satisfies ToTapBeside);
    serve(first);
    const following = followIncarnations(context, first, beside, async (next, incarnation) => {
      serve(next);
      context.note('followed', `incarnation ${incarnation} of the NIC's driver serves ${device.name}`);
    });
    return {
      detail: `MAC ${first.setup.mac}, up, served in its driver's thread`,
      providerGone: () => {},
      close: async () => {
        following.stop();
        following.current.stop();
        device.close();
      },
    };
  },
};

const OPENERS: { readonly [K in ExportKindName]: Opener<Extract<ExportEntry, { kind: K }>> } = { ublk, nbd, tap };

const opener = (entry: ExportEntry) => OPENERS[entry.kind] as Opener<ExportEntry>;

export class HostExports {
  private readonly opened = new Map<ExportEntry, Opened>();
  private readonly opening = new Set<Promise<void>>();
  private stopping = false;
  private stop!: () => void;
  private readonly stopped = new Promise<void>((resolve) => (this.stop = resolve));

  constructor(
    private readonly entries: readonly ExportEntry[],
    private readonly host: ExportHost,
  ) {}

  /** Opens each export as soon as its provider provides. */
  start(): void {
    for (const entry of this.entries) {
      const opening = this.open(entry).finally(() => this.opening.delete(opening));
      this.opening.add(opening);
    }
  }

  /** The device at `address` was released for good: its exports' waiting requests fail now (the exports stay until shutdown). */
  providerReleased(address: PciAddress, reason: string): void {
    for (const [entry, opened] of this.opened) if (entry.address === address) opened.providerGone(reason);
  }

  /** Removes every export (what the OS sees synchronously, then the rest); exports still waiting for their provider give up. */
  async close(): Promise<void> {
    this.stopping = true;
    this.stop();
    const closing = [...this.opened].map(([entry, opened]) => this.remove(entry, opened));
    await Promise.allSettled([...this.opening]);
    await Promise.allSettled(closing);
  }

  private async open(entry: ExportEntry): Promise<void> {
    const note = (phase: ExportPhase, detail: string) => this.host.emit({
      type: 'export', at: Date.now(), address: entry.address, kind: entry.kind, service: entry.service, target: opener(entry).target(entry), phase, detail,
    });
    let opened: Opened | undefined;
    try {
      opened = await opener(entry).open(entry, { host: this.host, stopped: this.stopped, note });
    } catch (e) {
      note('failed', `${entry.path}: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    if (opened === undefined) return;
    note('open', opened.detail);
    if (this.stopping) return this.remove(entry, opened);
    this.opened.set(entry, opened);
  }

  private async remove(entry: ExportEntry, opened: Opened): Promise<void> {
    this.opened.delete(entry);
    const detail = await opened.close().then(() => 'removed', (e: unknown) => `removed, with an error: ${e instanceof Error ? e.message : String(e)}`);
    this.host.emit({
      type: 'export', at: Date.now(), address: entry.address, kind: entry.kind, service: entry.service, target: opener(entry).target(entry), phase: 'closed', detail,
    });
  }
}
