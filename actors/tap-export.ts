/**
 * Exports a NIC's packet port to the OS as a TAP interface, so the kernel's
 * own network stack runs over the userland driver: frames the kernel sends
 * on the TAP go out through the port; frames the port receives go up the
 * TAP. The TAP takes the NIC's station address (the NIC's own unicast
 * filter then passes its frames), and the NIC is told the multicast groups
 * the kernel joined on the TAP (read from /proc/net/dev_mcast), so IPv6
 * neighbour discovery works without promiscuous mode.
 *
 *   const tap = TapExport.open(host.packetPort('nic0'), 'upci0');
 *   // ip link set upci0 up; ping -6 fe80::...%upci0
 *   tap.close();
 */
import { readFileSync, readSync, writeSync } from 'node:fs';
import type { Subscription } from 'rxjs';
import { parseMac, type PacketPort } from '../drivers/packet.js';
import { openTap, type Tap } from '../kernel/linux/tap.js';

const BATCH = 32;
const MULTICAST_POLL_MS = 200;
const IDLE_MS = 1;

export interface TapCounters {
  /** Frames from the kernel sent through the port. */
  toWire: number;
  /** Frames from the port written to the kernel. */
  toKernel: number;
  /** Frames the kernel refused to take (its queue was full). */
  toKernelDropped: number;
}

export class TapExport {
  readonly counters: TapCounters = { toWire: 0, toKernel: 0, toKernelDropped: 0 };
  private readonly subscription: Subscription;
  private readonly buffers = Array.from({ length: BATCH }, () => Buffer.alloc(2048));
  private timer: NodeJS.Timeout | NodeJS.Immediate | undefined;
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
    this.schedule(0);
  }

  /** Creates the TAP interface `name` (it comes up with `ip link set NAME up`) over `port`, which must be attached. */
  static open(port: PacketPort, name = 'upci0'): TapExport {
    const info = port.attached;
    if (info === undefined) throw new Error(`TAP export: the NIC ${port.name} has no driver attached (start the host first)`);
    return new TapExport(port, openTap(name, parseMac(info.mac)));
  }

  get name(): string {
    return this.tap.name;
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    this.timer = ms === 0 ? setImmediate(() => this.pump()) : setTimeout(() => this.pump(), ms);
  }

  /** Reads what the kernel sent (up to a batch), sends it, and comes back: at once if there was more, else after IDLE_MS. */
  private pump(): void {
    if (this.closed) return;
    const frames: Buffer[] = [];
    for (let i = 0; i < BATCH; i++) {
      let n: number;
      try {
        n = readSync(this.tap.fd, this.buffers[i]!, 0, 2048, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
        throw e;
      }
      frames.push(this.buffers[i]!.subarray(0, n));
    }
    if (frames.length === 0) return this.schedule(IDLE_MS);
    void this.sendAll(frames);
  }

  private async sendAll(frames: Buffer[]): Promise<void> {
    let sent = 0;
    while ((sent += this.port.send(frames, sent)) < frames.length && !this.closed) await this.port.writable();
    this.counters.toWire += frames.length;
    this.schedule(0);
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
    if (this.timer !== undefined) {
      clearTimeout(this.timer as NodeJS.Timeout);
      clearImmediate(this.timer as NodeJS.Immediate);
    }
    this.subscription.unsubscribe();
    this.port.setMulticast([]);
    this.tap.close();
  }
}
