/**
 * Packet rates of a upci NIC driver against the guest kernel's driver on an
 * identical NIC in the same VM run (bench:net for e1000e, bench:virtio for
 * virtio-net), the kernel side measured with AF_PACKET (vm/net/peer.c, the
 * C reference).
 *
 * Transmit rows send to an address no NIC accepts (the frames cross the hub
 * and are filtered by the other NIC's address filter), so they measure the
 * sender alone. Receive rows have the other NIC send as fast as it can; they
 * count what the receiver got. The driver runs in its own thread; this
 * module is its consumer in the main thread, through the packet port's
 * shared-memory rings (services/packet-service.ts). CPU per packet: for upci
 * the node process (all its threads: the driver's and this one, user +
 * system); for the kernel the peer process plus the guest's irq and softirq
 * time, where its driver runs (/proc/stat). Guest clock, TCG: ratios mean
 * something, absolute rates are QEMU's. Bytes per packet: what upci's rows
 * allocated on the consumer's (main) thread's heap (allocation.ts) over the
 * steady-state middle of the row, frames 10 % to 90 %; the driver thread's
 * heap is not in it. With `sites`, where (V8's sampling heap profiler).
 */
import { readFileSync } from 'node:fs';
import { startAllocationMeter, type Allocation } from './allocation.js';

const DISCARD = '02:00:00:00:00:01';

interface Row { direction: 'transmit' | 'receive'; bytes: number; side: 'upci' | 'kernel'; pps: number; cpuUsPerPacket: number; lost: number; heap?: SteadyHeap }

/** irq + softirq jiffies of all CPUs, in seconds. */
function interruptSeconds(): number {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (cpu[5]! + cpu[6]!) / 100;
}

interface SteadyHeap { readonly allocation: Allocation; readonly frames: number }

/**
 * The steady-state window of a row: the allocation meter runs from frame
 * `count / 10` to frame `count * 9 / 10`, opened and closed by the hot loop
 * itself (at: frames so far), so start-up and the peer's process spawn stay
 * outside it. A row that ends short of the window's end (frames lost)
 * closes it at its last frame.
 */
class SteadyWindow {
  private stop: (() => Allocation) | undefined;
  private result: SteadyHeap | undefined;
  private readonly from: number;
  private readonly to: number;
  constructor(count: number, private readonly sites: boolean) {
    this.from = Math.floor(count / 10);
    this.to = Math.floor((count * 9) / 10);
  }

  at(frames: number): void {
    if (this.result !== undefined) return;
    if (this.stop === undefined) {
      if (frames >= this.from) this.stop = startAllocationMeter(this.sites);
    } else if (frames >= this.to) {
      this.close(this.to);
    }
  }

  /** The row is over after `frames`; what the window measured, if it opened. */
  end(frames: number): { heap?: SteadyHeap } {
    if (this.result === undefined && this.stop !== undefined) this.close(frames);
    return this.result === undefined ? {} : { heap: this.result };
  }

  private close(frames: number): void {
    this.result = { allocation: this.stop!(), frames: frames - this.from };
  }
}

export interface PacketRateOptions {
  /** The driver (builtin) and the options upci's NIC is claimed with. */
  readonly driver: string;
  readonly options: Readonly<Record<string, unknown>>;
  /** upci's NIC and the kernel's identical one on the same hub (guest addresses). */
  readonly address: string;
  readonly kernelAddress: string;
  readonly peerBinary: string;
  /** Frames per row. */
  readonly count: number;
  /** Also list where upci's rows allocated. */
  readonly sites: boolean;
}

/** The table of transmit and receive rates at 60 and 1514 bytes, upci against the kernel. */
export async function packetRates(o: PacketRateOptions): Promise<string> {
  const { sites, count } = o;
  const { parseHostConfig } = await import('../../actors/config.js');
  const { DriverHost } = await import('../../actors/host.js');
  const { builtinDrivers } = await import('../../drivers/index.js');
  const { KernelPeer } = await import('../net/kernel-peer.js');
  const { buildFrame, macBytes } = await import('../net/frames.js');
  const peer = await KernelPeer.open(o.kernelAddress, o.peerBinary);
  const host = DriverHost.claim(parseHostConfig({ devices: [{ address: o.address, driver: o.driver, options: o.options }] }, builtinDrivers));
  host.start();
  const port = host.packetPort(o.address);
  const deadline = Date.now() + 60_000;
  while (!(port.attached && port.linkState.up)) {
    if (Date.now() > deadline) throw new Error(`${o.driver} bench: the driver did not come up within 60 s`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const rows: Row[] = [];
  for (const bytes of [60, 1514]) {
    // upci transmit: batches of 64 with backpressure.
    const src = macBytes(port.attached!.mac);
    const batch = Array.from({ length: 64 }, (_, i) => buildFrame(new Uint8Array(bytes), macBytes(DISCARD), src, i, bytes));
    let window = new SteadyWindow(count, sites);
    let cpu = process.cpuUsage();
    let t0 = performance.now();
    for (let sent = 0; sent < count;) {
      let n = 0;
      while ((n += port.send(batch, n)) < batch.length) await port.writable();
      sent += batch.length;
      window.at(sent);
    }
    let seconds = (performance.now() - t0) / 1000;
    let used = process.cpuUsage(cpu);
    rows.push({ direction: 'transmit', bytes, side: 'upci', pps: count / seconds, cpuUsPerPacket: (used.user + used.system) / count, lost: 0, ...window.end(count) });
    // Kernel transmit.
    let irq0 = interruptSeconds();
    const ks = await peer.send(DISCARD, count, bytes, bytes, 0);
    rows.push({ direction: 'transmit', bytes, side: 'kernel', pps: count / ks.seconds, cpuUsPerPacket: ((ks.cpuSeconds + interruptSeconds() - irq0) * 1e6) / count, lost: 0 });

    // upci receive: the kernel sends as fast as it can. The consumer reads the clock at
    // the first and the last frame only (a clock read per frame would allocate: the
    // window measures the driver, not this callback); when frames are lost, the last
    // is the last progress the idle check saw (50 ms resolution).
    let received = 0;
    let first = 0;
    let last = 0;
    window = new SteadyWindow(count, sites);
    const sub = port.frames.subscribe((f) => {
      if (received === 0) first = performance.now();
      received++;
      window.at(received);
      if (received === count) last = performance.now();
      f.release();
    });
    cpu = process.cpuUsage();
    await peer.send(port.attached!.mac, count, bytes, bytes, 0);
    await new Promise<void>((resolve) => {
      let seen = -1;
      let progressAt = performance.now();
      const check = () => {
        const now = performance.now();
        if (received !== seen) {
          seen = received;
          progressAt = now;
        }
        if (received >= count || (received > 0 && now - progressAt > 500)) {
          if (received < count) last = progressAt;
          resolve();
        } else {
          setTimeout(check, 50);
        }
      };
      check();
    });
    used = process.cpuUsage(cpu);
    sub.unsubscribe();
    rows.push({ direction: 'receive', bytes, side: 'upci', pps: received / ((last - first) / 1000), cpuUsPerPacket: (used.user + used.system) / received, lost: count - received, ...window.end(received) });

    // Kernel receive: upci sends as fast as it can.
    const rx = peer.receive(count, 2000);
    await rx.ready;
    irq0 = interruptSeconds();
    const dst = macBytes(peer.mac);
    const frames = Array.from({ length: 64 }, () => new Uint8Array(bytes));
    t0 = performance.now();
    for (let seq = 0; seq < count; seq += 64) {
      const b = frames.map((f, i) => buildFrame(f, dst, src, seq + i, bytes));
      let n = 0;
      while ((n += port.send(b, n)) < b.length) await port.writable();
    }
    const r = await rx.result;
    seconds = (performance.now() - t0) / 1000;
    rows.push({ direction: 'receive', bytes, side: 'kernel', pps: r.received / r.seconds, cpuUsPerPacket: ((r.cpuSeconds + interruptSeconds() - irq0) * 1e6) / Math.max(1, r.received), lost: count - r.received });
    void seconds;
  }
  await host.shutdown();
  peer.close();

  const f = (n: number, d = 0) => n.toLocaleString('en', { maximumFractionDigits: d, minimumFractionDigits: d });
  const out = [
    `${o.driver}, ${f(count)} frames per row, guest clock (TCG). Frame sizes without FCS (60 = 64 on the wire).`,
    '',
    '| direction | frame | upci pps | kernel pps | upci / kernel | upci CPU µs/pkt | kernel CPU µs/pkt | lost (upci, kernel) | upci heap B/pkt (GCs) |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|',
  ];
  const heap = (h: SteadyHeap | undefined) => (h === undefined ? 'n/a' : `${f(h.allocation.bytes / h.frames, 1)} (${h.allocation.collections})`);
  for (const direction of ['transmit', 'receive'] as const) {
    for (const bytes of [60, 1514]) {
      const u = rows.find((x) => x.direction === direction && x.bytes === bytes && x.side === 'upci')!;
      const k = rows.find((x) => x.direction === direction && x.bytes === bytes && x.side === 'kernel')!;
      out.push(`| ${direction} | ${bytes} B | ${f(u.pps)} | ${f(k.pps)} | ${f(u.pps / k.pps, 2)} | ${f(u.cpuUsPerPacket, 1)} | ${f(k.cpuUsPerPacket, 1)} | ${u.lost}, ${k.lost} | ${heap(u.heap)} |`);
    }
  }
  if (sites) {
    for (const { direction, bytes, heap: h } of rows.filter((x) => x.side === 'upci')) {
      if (h === undefined) continue;
      out.push('', `Allocation sites, upci ${direction} ${bytes} B (sampled bytes per packet):`);
      for (const site of h.allocation.sites.slice(0, 8)) out.push(`- ${f(site.bytes / h.frames, 2)} ${site.where}`);
    }
  }
  return out.join('\n');
}

