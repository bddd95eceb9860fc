// NVMe benchmark: 4 KiB random reads at queue depth 1 and 32 on two identical emulated
// controllers in one VM run: upci's driver with its own load generator (vm/benchmarks/nvme-perf.ts,
// like SPDK's perf) on one, the guest kernel's nvme driver under fio (io_uring, direct=1) on
// the other.
//
//   npm run bench:nvme [-- --quick]
//
// Under TCG the emulated controller and QEMU's block layer do most of the work per I/O;
// the ratios say how much upci adds or saves around them. upci's 'API' rows run the same
// BlockDevice load on the driver in the main thread and in its own thread (through the
// shared-memory rings of services/block-service.ts): with a promise per read into unregistered
// shared memory (bounced), and on registered memory (no promise, no map, no copy).
import type { BlockDevice } from '../../drivers/block.js';
import { defaultDevices, findProjectRoot, guestAddress } from '../bench.js';
import { benchmarkMain } from './harness.js';
import { fio, kernelController, kernelNvme } from './kernel-drivers.js';


const upciController = defaultDevices.find((d) => d.model === 'nvme' && d.slot === '0a.0')!;


interface Row {
  readonly iops: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly cpuUsPerIo: number;
  readonly note: string;
}

/**
 * upci's rows: its SPDK-style load generator (vm/benchmarks/nvme-perf.ts) needs
 * the namespace object, so the driver runs in the main thread for those
 * ('perf' rows); the BlockDevice API's own load (block-load.ts) runs on a
 * driver in the main thread and on one in its own thread, reached through
 * the host's BlockProxy (services/block-service.ts): their difference is what
 * crossing threads costs.
 */
async function upciRows(seconds: number): Promise<Record<string, Row>> {
  const { parseHostConfig } = await import('../../actors/config.js');
  const { DriverHost } = await import('../../actors/host.js');
  const { BlockProxy } = await import('../../services/block-service.js');
  const { withMainThread } = await import('../main-thread-drivers.js');
  const { nvmeDriver } = await import('../../drivers/nvme/index.js');
  const { NvmeNamespace } = await import('../../drivers/nvme/namespace.js');
  const { randomReads } = await import('./nvme-perf.js');
  const { blockReads, registeredReads } = await import('./block-load.js');
  const registry = withMainThread(nvmeDriver);
  const rows: Record<string, Row> = {};
  const alloc = (r: { scavenges: number; heapBytesPerIo: number }) => (r.scavenges === 0 ? `${r.heapBytesPerIo.toFixed(1)} B/I/O allocated here` : `${r.scavenges} scavenges here (>= ${r.heapBytesPerIo.toFixed(0)} B/I/O)`);
  const api = async (label: string, ns: BlockDevice) => {
    // 10 s: a new driver thread's isolate is still compiling (TCG) when its first rows would start.
    await blockReads(ns, { depth: 32, bytes: 4096, seconds: 10, warmupSeconds: 0 });
    await registeredReads(ns, { depth: 32, bytes: 4096, seconds: 3, warmupSeconds: 0 });
    for (const depth of [1, 32]) {
      const r = await blockReads(ns, { depth, bytes: 4096, seconds, warmupSeconds: 2 });
      rows[`API QD${depth}, ${label}`] = { ...r, note: `${r.ios} I/Os, ${r.errors} errors, a promise per read into unregistered shared memory (bounced), ${alloc(r)}` };
      const g = await registeredReads(ns, { depth, bytes: 4096, seconds, warmupSeconds: 2 });
      rows[`API registered QD${depth}, ${label}`] = { ...g, note: `${g.ios} I/Os, ${g.errors} errors, RegisteredBuffer.read, ${alloc(g)}` };
    }
  };
  for (const mode of ['main', 'polled', 'own thread'] as const) {
    const driver = mode === 'own thread' ? 'nvme' : 'nvme-main';
    const polled = mode === 'polled';
    const host = DriverHost.claim(parseHostConfig({ devices: [{ address: guestAddress(upciController), name: 'bench', driver, options: { ioQueues: 1, queueDepth: 64, polled } }] }, registry), { registry });
    host.start();
    try {
      const ns = await host.blockDevice('benchn1', 120_000);
      if (mode === 'own thread') {
        if (!(ns instanceof BlockProxy)) throw new Error('benchn1 is not a proxy of a driver thread\'s namespace');
        await api('driver in its own thread', ns);
        continue;
      }
      if (!(ns instanceof NvmeNamespace)) throw new Error('benchn1 is not an NVMe namespace in this thread');
      // Under TCG V8 needs seconds to optimize the driver's path: a throwaway run first.
      await randomReads(ns, { depth: 32, bytes: 4096, seconds: 3, warmupSeconds: 0 });
      for (const depth of polled ? [32] : [1, 32]) {
        const r = await randomReads(ns, { depth, bytes: 4096, seconds, warmupSeconds: 2 });
        rows[`perf ${polled ? 'polled ' : ''}QD${depth}`] = { ...r, note: `${r.ios} I/Os, ${r.errors} errors, ${alloc(r)}` };
      }
      if (!polled) await api('driver in the main thread', ns);
    } finally {
      await host.shutdown();
    }
  }
  return rows;
}

async function kernelRows(root: string, seconds: number): Promise<Record<string, Row>> {
  const dev = await kernelNvme(root);
  const rows: Record<string, Row> = {};
  for (const depth of [1, 32]) rows[`QD${depth}`] = await fio(dev, { rw: 'randread', bs: '4k', depth }, seconds);
  return rows;
}

async function guest(quick: boolean): Promise<number> {
  const seconds = quick ? 3 : 10;
  const root = findProjectRoot();
  const upci = await upciRows(seconds);
  const kernel = await kernelRows(root, seconds);
  const lines = [
    `NVMe 4 KiB random reads, ${seconds} s per row after a throwaway run (3 s; 10 s before the API rows) and 2 s of warm-up (fio: 1 s ramp); upci on ${guestAddress(upciController)}, the kernel's nvme + fio (io_uring, direct=1) on the identical ${guestAddress(kernelController)} (TCG guest)`,
    '',
    '| load | kernel IOPS | upci IOPS | IOPS upci / kernel | kernel p50 / p99 µs | upci p50 / p99 µs | kernel CPU µs/I/O | upci CPU µs/I/O | upci notes | kernel notes |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---|---|',
  ];
  for (const [name, u] of Object.entries(upci)) {
    const k = kernel[/QD\d+/.exec(name)![0]]!;
    lines.push(`| ${name} | ${k.iops.toFixed(0)} | ${u.iops.toFixed(0)} | ${(u.iops / k.iops).toFixed(2)} | ${k.p50Us.toFixed(0)} / ${k.p99Us.toFixed(0)} | ${u.p50Us} / ${u.p99Us} | ${k.cpuUsPerIo.toFixed(0)} | ${u.cpuUsPerIo.toFixed(0)} | ${u.note} | ${k.note} |`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

await benchmarkMain({ name: 'nvme', reference: undefined, script: 'nvme.js', cpus: 2 }, (_reference, quick) => guest(quick));
