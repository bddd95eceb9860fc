/**
 * The host's exports (the config's "exports", actors/export-config.ts):
 * each is opened once its provider's driver provides the service, kept
 * while the provider is restarted under it, and removed at shutdown (the
 * NBD socket file gone, the TAP interface deleted). Each step is an
 * 'export' event.
 *
 * Across a supervised restart the OS keeps what it holds: the NBD export
 * serves a FollowingBlockDevice (requests the old incarnation did not
 * finish wait for the next and are issued to it again), and the TAP export
 * binds to the packet port, which outlives incarnations (while none is
 * attached the kernel's frames wait in the TAP's queue).
 *
 * A new kind of export is an opener in OPENERS (the compiler asks for one
 * per kind of ExportEntry).
 */
import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { filter, firstValueFrom, type Subscription } from 'rxjs';
import type { BlockDevice } from '../drivers/block.js';
import type { PacketPort } from '../drivers/packet.js';
import { UpciError } from '../kernel/errors.js';
import type { PciAddress } from '../kernel/pci-address.js';
import type { HostEvent } from './events.js';
import type { ExportEntry, ExportKindName, NbdExportEntry, TapExportEntry, UblkExportEntry } from './export-config.js';
import { FollowingBlockDevice } from './following-block-device.js';
import { NbdServer } from './nbd-server.js';
import { TapExport } from './tap-export.js';
import { UblkExport } from './ublk-export.js';

/** What the exports need of the host. */
export interface ExportHost {
  /** The block device `name` of the provider's incarnation now, waiting up to timeoutMs for one (DriverHost.blockDevice). */
  blockDevice(name: string, timeoutMs: number): Promise<BlockDevice>;
  /** The packet port `name`, one object across incarnations (DriverHost.packetPort). */
  packetPort(name: string): PacketPort;
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

/** One wait for the provider's first incarnation, asked again while the host runs (a driver's first attach may take long). */
const FIRST_WAIT_MS = 30_000;
/**
 * How long a request waits for the provider's next incarnation: longer than
 * a restart takes (a driver thread's load, 5-18 s in the TCG guest, plus the
 * back-off); a provider given up fails its waiting requests at once instead.
 */
const FOLLOW_WAIT_MS = 120_000;
/** Requests that wait for a next incarnation at once, per export (the kernel's nbd client sends at most 128 per connection by default). */
const MAX_WAITING = 1024;

/** `wait`, or undefined once the host stopped. */
const unlessStopped = <T>(context: OpenContext, wait: Promise<T>): Promise<T | undefined> =>
  Promise.race([wait, context.stopped.then(() => undefined)]);

/** The export's NBD server: its socket file made with `mode` exactly, in a directory made if missing (NbdServer.listen). */
async function listenNbd(entry: NbdExportEntry, device: BlockDevice): Promise<NbdServer> {
  mkdirSync(dirname(entry.socket), { recursive: true, mode: 0o755 });
  return NbdServer.listen(entry.socket, [{ name: entry.service, device }], { mode: entry.mode });
}

/**
 * The block device `entry` exports, once its provider provides it, as one object that follows the provider across
 * its restarts; undefined when the host stopped first.
 */
async function followedBlockDevice(entry: UblkExportEntry | NbdExportEntry, context: OpenContext): Promise<FollowingBlockDevice | undefined> {
  let first: BlockDevice | undefined;
  while (first === undefined) {
    // A refusal (not provided within the wait) is asked again; the host's stop ends the asking, and so does a
    // refusal that is final (its provider's device released: it will not be provided), which fails the export.
    const got = await unlessStopped(context, context.host.blockDevice(entry.service, FIRST_WAIT_MS).then((d) => ({ d }), (e: unknown) => {
      if (e instanceof UpciError && e.code === 'RELEASED') throw e;
      return { d: undefined };
    }));
    if (got === undefined) return undefined;
    first = got.d;
  }
  return new FollowingBlockDevice(
    first, (ms) => context.host.blockDevice(entry.service, ms), { waitMs: FOLLOW_WAIT_MS, maxWaiting: MAX_WAITING },
    (stats) => context.note('followed', `incarnation ${stats.incarnations} of its driver; ${stats.waiting} request(s) waited for it`),
  );
}

const ublk: Opener<UblkExportEntry> = {
  target: (entry) => (entry.id === undefined ? '/dev/ublkb (the kernel\'s next number)' : `/dev/ublkb${entry.id}`),
  async open(entry, context) {
    const device = await followedBlockDevice(entry, context);
    if (device === undefined) return undefined;
    let disk: UblkExport;
    try {
      // The following device re-issues what a restart failed: the export itself needs no reacquire.
      disk = await UblkExport.open(device, { queueDepth: entry.queueDepth, ...(entry.id === undefined ? {} : { id: entry.id }) });
    } catch (e) {
      device.close('the export could not be opened');
      throw e;
    }
    return {
      detail: `${disk.path}: ${device.blockCount} blocks of ${device.blockSize} B, queue depth ${entry.queueDepth}`,
      providerGone: (reason) => device.close(reason),
      close: async () => {
        await disk.close();
        device.close('the export was closed');
      },
    };
  },
};

const nbd: Opener<NbdExportEntry> = {
  target: (entry) => entry.socket,
  async open(entry, context) {
    const device = await followedBlockDevice(entry, context);
    if (device === undefined) return undefined;
    const server = await listenNbd(entry, device);
    return {
      detail: `${device.blockCount} blocks of ${device.blockSize} B, mode 0${entry.mode.toString(8)}`,
      providerGone: (reason) => device.close(reason),
      close: async () => {
        rmSync(entry.socket, { force: true });
        await server.close();
        device.close('the export was closed');
      },
    };
  },
};

const tap: Opener<TapExportEntry> = {
  target: (entry) => entry.ifname,
  async open(entry, context) {
    const port = context.host.packetPort(entry.service);
    const info = await unlessStopped(context, firstValueFrom(port.info.pipe(filter((i) => i !== undefined))));
    if (info === undefined) return undefined;
    const exported = TapExport.open(port, entry.ifname, { up: true });
    let attached = true;
    const following: Subscription = port.info.subscribe((now) => {
      if (now !== undefined && !attached) context.note('followed', `the NIC's next incarnation; ${exported.counters.toWire} frame(s) to the wire so far`);
      attached = now !== undefined;
    });
    return {
      detail: `MAC ${info.mac}, up`,
      providerGone: () => {},
      close: async () => {
        following.unsubscribe();
        exported.close();
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
