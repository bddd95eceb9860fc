/**
 * Exports a NIC's packet port to the OS as a TAP interface, so the kernel's
 * own network stack runs over the userland driver: frames the kernel sends
 * on the TAP go out through the port; frames the port receives go up the
 * TAP. The TAP takes the NIC's station address (the NIC's own unicast
 * filter then passes its frames), and the NIC is told the multicast groups
 * the kernel joined on the TAP (read from /proc/net/dev_mcast), so IPv6
 * neighbour discovery works without promiscuous mode.
 *
 * The kernel's frames are read when the TAP's fd is readable (a uv_poll in
 * this thread's loop, kernel/interrupt-watcher.ts, the interrupts' own
 * machinery), a batch per wake-up, and sent through the port as one batch:
 * no timer in the path.
 *
 * The host's config exports run it beside the NIC's provider, in the
 * driver's own thread (serveBeside below, actors/exports.ts): frames go
 * between the TAP and the NIC with no other thread in between. The host
 * keeps the TAP's descriptor, so the interface stays while the driver is
 * restarted; each incarnation's thread serves it in turn.
 *
 *   const tap = TapExport.open(host.packetPort('nic0'), 'upci0', { up: true });
 *   // ping -6 fe80::...%upci0
 *   tap.close();
 */
import { readFileSync, readSync, writeSync } from 'node:fs';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import type { Subscription } from 'rxjs';
import { ETHER_HEADER, MAX_FRAME, parseMac, type PacketPort } from '../drivers/packet.js';
import { openTap, type Tap } from '../kernel/linux/tap.js';
import { watchReadable, type SourceWatch } from '../kernel/interrupt-watcher.js';
import { NetPort } from '../services/net-port.js';
import type { PacketSource } from '../services/packet-service.js';
import type { ServeBeside } from '../services/service.js';

/** Frames read from the TAP per wake-up, sent through the port as one batch. */
const BATCH = 32;
const MULTICAST_POLL_MS = 200;

export interface TapCounters {
  /** Frames from the kernel sent through the port. */
  toWire: number;
  /** Frames from the port written to the kernel. */
  toKernel: number;
  /** Frames the kernel refused to take (its queue was full). */
  toKernelDropped: number;
  /** Frames from the kernel longer than the port carries (the TAP's MTU raised past 1500): dropped. */
  oversize: number;
  /** Frames from the kernel shorter than an Ethernet header, which the port refuses: dropped, not sent with the batch. */
  runts: number;
  /** Times the TAP's fd woke this thread with frames to read. */
  wakeUps: number;
}

export class TapExport {
  readonly counters: TapCounters = { toWire: 0, toKernel: 0, toKernelDropped: 0, oversize: 0, runts: 0, wakeUps: 0 };
  private readonly subscription: Subscription;
  private readonly attachment: Subscription;
  private readonly buffers = Array.from({ length: BATCH }, () => Buffer.alloc(2048));
  private readonly batch: Buffer[] = [];
  /** Set while the TAP's fd is polled: not while no incarnation is attached, nor while a batch waits for transmit buffers. */
  private watch: SourceWatch | undefined;
  private sending = false;
  private readonly multicastTimer: NodeJS.Timeout;
  private multicastSeen = '';
  private closed = false;

  private constructor(private readonly port: PacketPort, private readonly tap: Tap) {
    this.subscription = port.frames.subscribe((frame) => {
      try {
        writeSync(tap.fd, frame.bytes, 0, frame.length);
        this.counters.toKernel++;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN' && (e as NodeJS.ErrnoException).code !== 'EIO') throw e;
        // EIO: the TAP is down; EAGAIN: its queue is full. The kernel would drop it too.
        this.counters.toKernelDropped++;
      } finally {
        frame.release();
      }
    });
    this.multicastTimer = setInterval(() => this.syncMulticast(), MULTICAST_POLL_MS);
    this.syncMulticast();
    // While the driver restarts, what the kernel sends waits in the TAP's own queue (txqueuelen frames; the kernel drops past it).
    this.attachment = port.info.subscribe((info) => (info === undefined ? this.pause() : this.resume()));
  }

  /**
   * Creates the TAP interface `name` over `port`, which must be attached,
   * and with `up`, sets it up. The interface lives until close(), whatever
   * the port's incarnations do meanwhile.
   */
  static open(port: PacketPort, name = 'upci0', options: { up?: boolean } = {}): TapExport {
    const info = port.attached;
    if (info === undefined) throw new Error(`TAP export: the NIC ${port.name} has no driver attached (start the host first)`);
    const tap = openTap(name, parseMac(info.mac));
    try {
      if (options.up === true) tap.up();
    } catch (e) {
      tap.close();
      throw e;
    }
    return new TapExport(port, tap);
  }

  /** Serves a TAP whose descriptor someone else holds (and closes): close() leaves the interface. */
  static over(port: PacketPort, borrowed: { readonly fd: number; readonly name: string }): TapExport {
    return new TapExport(port, { ...borrowed, up: () => {}, close: () => {} });
  }

  get name(): string {
    return this.tap.name;
  }

  private resume(): void {
    if (this.closed || this.sending || this.watch !== undefined || this.port.attached === undefined) return;
    this.watch = watchReadable(this.tap.fd, () => this.pump());
  }

  private pause(): void {
    this.watch?.unwatch();
    this.watch = undefined;
  }

  /** The TAP's fd is readable: reads what the kernel sent, up to a batch, and sends it through the port at once. */
  private pump(): void {
    const frames = this.batch;
    frames.length = 0;
    for (let i = 0; i < BATCH; i++) {
      let n: number;
      try {
        n = readSync(this.tap.fd, this.buffers[i]!, 0, 2048, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
        throw e;
      }
      // A frame the port would refuse would refuse the whole batch with it.
      if (n > MAX_FRAME) this.counters.oversize++;
      else if (n > 0 && n < ETHER_HEADER) this.counters.runts++;
      else if (n > 0) frames.push(this.buffers[i]!.subarray(0, n));
    }
    if (frames.length === 0) return;
    this.counters.wakeUps++;
    const sent = this.port.send(frames);
    if (sent === frames.length) {
      this.counters.toWire += sent;
      return;
    }
    // Every transmit buffer in flight: no more reads (the buffers hold this batch) until the rest is sent.
    this.pause();
    this.sending = true;
    void this.sendRest(frames, sent);
  }

  private async sendRest(frames: Buffer[], sent: number): Promise<void> {
    while (sent < frames.length && !this.closed) {
      await this.port.writable();
      sent += this.port.send(frames, sent);
    }
    this.counters.toWire += sent;
    this.sending = false;
    this.resume();
  }
  private syncMulticast(): void {
    let text: string;
    try {
      text = readFileSync('/proc/net/dev_mcast', 'utf8');
    } catch {
      return;
    }
    const groups = text.split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f[1] === this.tap.name && f[4]?.length === 12)
      .map((f) => f[4]!.match(/../g)!.join(':'));
    const key = groups.join(' ');
    if (key === this.multicastSeen) return;
    this.multicastSeen = key;
    this.port.setMulticast(groups.map(parseMac));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.multicastTimer);
    this.attachment.unsubscribe();
    this.pause();
    this.subscription.unsubscribe();
    this.port.setMulticast([]);
    this.tap.close();
  }
}

/** What the host sends a TAP export served beside its NIC: serve the TAP it holds. */
export type ToTapBeside = { readonly type: 'serve'; readonly fd: number; readonly name: string };

/** What a TAP export served beside its NIC hands the host: the NIC's station address, and a port to start it on. */
export interface TapBesideSetup {
  readonly mac: string;
  readonly port: MessagePort;
}

/**
 * The TAP export beside a NIC's provider (a BesideTask's module), on its
 * own packet source: hands the host the NIC's address at once, serves the
 * TAP's descriptor when the host says (it made the interface), stops with
 * the provider and leaves the interface to the host.
 */
export const serveBeside: ServeBeside<PacketSource, { readonly portName: string }, TapBesideSetup> = (source, args) => {
  const { port1: here, port2: there } = new MessageChannel();
  const port = new NetPort(args.portName, () => Promise.resolve(source));
  let exported: TapExport | undefined;
  here.on('message', (m: ToTapBeside) => {
    if (m.type === 'serve' && exported === undefined) exported = TapExport.over(port, m);
  });
  return {
    setup: { mac: source.info.mac, port: there },
    transfer: [there],
    stop: () => {
      exported?.close();
      port.close('the TAP export beside it stopped');
      here.close();
    },
  };
};
