/**
 * The guest kernel's NIC as the link partner (guest side): its interface is
 * moved into a network namespace of its own, held by a `sleep` started with
 * `unshare --net` (the read-only root has no /run/netns for `ip netns`),
 * and commands run in it through `nsenter`. Traffic between the upci NIC
 * (or a TAP in the root namespace) and this interface therefore crosses the
 * emulated wire. vm/net/peer.c is compiled on first use.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { findProjectRoot } from '../bench.js';

const PEER = '/tmp/upci-net-peer';

/** Each sequence number counts once: `received` (distinct), `duplicates` (again), `reordered` (after a higher one). */
export interface ReceiveResult {
  received: number; frames: number; bad: number; firstBad: number; duplicates: number; reordered: number; beyond: number;
  seconds: number; cpuSeconds: number;
}

export interface SendResult {
  sent: number; seconds: number; cpuSeconds: number; retries: number;
}

/** vm/net/peer.c, compiled here on first use unless the caller brings a binary (the benchmark harness does). */
function compiledPeer(): string {
  if (!existsSync(PEER)) execFileSync('cc', ['-O2', '-Wall', '-o', PEER, join(findProjectRoot(), 'vm', 'net', 'peer.c')], { stdio: 'inherit' });
  return PEER;
}

export class KernelPeer {
  private constructor(
    readonly ifname: string,
    readonly mac: string,
    private readonly holder: ChildProcess,
    private readonly peer: string,
  ) {}

  /** Takes the kernel-driven NIC at `address` into a namespace of its own and sets its link up. */
  static async open(address: string, peerBinary = compiledPeer()): Promise<KernelPeer> {
    // A PCI NIC's interface is under the function; a virtio one's under its virtio device.
    const pci = `/sys/bus/pci/devices/${address}`;
    const dir = [`${pci}/net`, ...(existsSync(pci) ? readdirSync(pci).filter((d) => /^virtio\d+$/.test(d)).map((d) => `${pci}/${d}/net`) : [])].find((d) => existsSync(d));
    if (dir === undefined) throw new Error(`kernel-peer: ${address} has no network interface (is it bound to its kernel driver, e1000e or virtio_net?)`);
    const ifname = readdirSync(dir)[0]!;
    const mac = readFileSync(join(dir, ifname, 'address'), 'utf8').trim();
    const holder = spawn('unshare', ['--net', 'sleep', '100000'], { stdio: 'ignore' });
    const peer = new KernelPeer(ifname, mac, holder, peerBinary);
    // The namespace exists once the holder runs sleep in it.
    const own = readlinkSafe('/proc/self/ns/net');
    const deadline = Date.now() + 10_000;
    while (readlinkSafe(`/proc/${holder.pid}/ns/net`) === own || !readlinkSafe(`/proc/${holder.pid}/exe`)?.endsWith('sleep')) {
      if (Date.now() > deadline) throw new Error('kernel-peer: unshare --net did not start within 10 s');
      await new Promise((r) => setTimeout(r, 10));
    }
    execFileSync('ip', ['link', 'set', 'dev', ifname, 'netns', String(holder.pid)]);
    // The largest rings the NIC has (4096 on the 82574; virtio's are the device's size already): a stalled vCPU then overflows nothing.
    await peer.run(peerBinary, 'ring', ifname);
    await peer.run('ip', 'link', 'set', 'dev', ifname, 'up');
    // Frames sent before the kernel driver reports carrier are dropped, silently: wait for it.
    const carrierDeadline = Date.now() + 30_000;
    while (!/[<,]LOWER_UP[,>]/.test(await peer.run('ip', '-o', 'link', 'show', 'dev', ifname))) {
      if (Date.now() > carrierDeadline) throw new Error(`kernel-peer: ${ifname} has no carrier 30 s after link up`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return peer;
  }

  private nsArgs(argv: readonly string[]): string[] {
    return [`--net=/proc/${this.holder.pid}/ns/net`, ...argv];
  }

  /** Runs a command in the namespace; resolves with its stdout. */
  run(...argv: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile('nsenter', this.nsArgs(argv), { maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
        if (error) reject(new Error(`kernel-peer: ${argv.join(' ')} failed: ${stderr || error.message}`));
        else resolve(stdout);
      });
    });
  }

  /** Starts a long-running command in the namespace. */
  spawn(...argv: string[]): ChildProcess {
    return spawn('nsenter', this.nsArgs(argv), { stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** Sends `count` test frames to `dst`, lengths cycling minLength..maxLength, `perSecond` on average (0: as fast as it goes). */
  async send(dst: string, count: number, minLength: number, maxLength: number, perSecond = 0): Promise<SendResult> {
    const out = await this.run(this.peer, 'send', this.ifname, dst, String(count), String(minLength), String(maxLength), String(perSecond));
    return JSON.parse(out) as SendResult;
  }

  /**
   * Starts receiving test frames: `ready` resolves once the socket is bound,
   * `result` after `count` frames or `idleMs` without one.
   */
  receive(count: number, idleMs: number): { ready: Promise<void>; result: Promise<ReceiveResult> } {
    const child = this.spawn(this.peer, 'recv', this.ifname, String(count), String(idleMs));
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const lines = createInterface({ input: child.stdout! });
    let onReady!: () => void;
    const ready = new Promise<void>((resolve) => (onReady = resolve));
    const result = new Promise<ReceiveResult>((resolve, reject) => {
      let last: string | undefined;
      lines.on('line', (line) => {
        if (line === 'ready') onReady();
        else last = line;
      });
      child.once('close', (code) => {
        onReady();
        if (code === 0 && last !== undefined) resolve(JSON.parse(last) as ReceiveResult);
        else reject(new Error(`kernel-peer: recv exited ${code}: ${stderr}`));
      });
    });
    return { ready, result };
  }

  /** The interface's IPv6 link-local address once duplicate address detection is done. */
  async linkLocal(timeoutMs = 20_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const out = await this.run('ip', '-6', '-o', 'addr', 'show', 'dev', this.ifname, 'scope', 'link');
      const m = /inet6 (fe80::[0-9a-f:]+)\/64 scope link(?! tentative)/.exec(out);
      if (m && !/tentative/.test(out)) return m[1]!;
      if (Date.now() > deadline) throw new Error(`kernel-peer: ${this.ifname} has no usable link-local address after ${timeoutMs} ms: ${out.trim()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  close(): void {
    this.holder.kill('SIGKILL');
  }
}

function readlinkSafe(path: string): string | undefined {
  try {
    return readlinkSync(path);
  } catch {
    return undefined;
  }
}
