// virtio benchmark, in one VM run: upci's virtio-blk on the bench's vblk0 (0c.0) against the
// guest kernel's virtio_blk under fio (io_uring, direct=1) on the identical vblk1 (0d.0), 4 KiB
// random reads at queue depth 1 and 32; and upci's virtio-net (0e.0) against the kernel's
// virtio_net on the identical NIC (0f.0) on the same hub, 60 B and 1514 B transmit and receive
// packet rates (packet-rates.ts says how; the kernel side with AF_PACKET, vm/net/peer.c).
//
//   npm run bench:virtio [-- --quick] [-- --allocations]
//
// upci's rows run the one random-read load generator (random-reads.ts): on registered memory
// (RegisteredBuffer.read: no promise, no map, no copy; the driver's own submit path when the
// driver runs in this thread) and through the BlockDevice API's promises (each read bounced),
// with the driver in this thread and in its own thread (the API across the shared-memory
// rings, as every export and program in another thread uses it).
import type { BlockDevice } from '../../drivers/block.js';
import { defaultDevices, findProjectRoot, guestAddress } from '../bench.js';
import { benchmarkMain } from './harness.js';
import { fio, kernelVirtioBlk, kernelVirtioNet, type FioResult } from './kernel-drivers.js';
import { packetRates } from './packet-rates.js';

const disks = defaultDevices.filter((d) => d.model === 'virtio-blk-pci');
const upciDisk = disks.find((d) => d.bind === 'vfio-pci')!;
const kernelDisk = disks.find((d) => d.bind === undefined)!;
const nics = defaultDevices.filter((d) => d.model === 'virtio-net-pci');
const kernelNic = nics.find((d) => d.bind === undefined)!;

interface Row {
  readonly load: string;
  readonly depth: number;
  readonly iops: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly cpuUsPerIo: number;
  readonly note: string;
}

async function upciRows(seconds: number): Promise<Row[]> {
  const { parseHostConfig } = await import('../../actors/config.js');
  const { DriverHost } = await import('../../actors/host.js');
  const { BlockProxy } = await import('../../services/block-service.js');
  const { withMainThread } = await import('../main-thread-drivers.js');
  const { virtioBlkDriver } = await import('../../drivers/virtio-blk/index.js');
  const { VirtioDisk } = await import('../../drivers/virtio-blk/disk.js');
  const { blockReads, registeredReads } = await import('./block-load.js');
  const registry = withMainThread(virtioBlkDriver);
  const rows: Row[] = [];
  const loads = [['registered', registeredReads], ['API promises', blockReads]] as const;
  for (const [where, driver] of [['driver in this thread', 'virtio-blk-main'], ['driver in its own thread', 'virtio-blk']] as const) {
    const host = DriverHost.claim(parseHostConfig({ devices: [{ address: guestAddress(upciDisk), name: 'bench', driver }] }, registry), { registry });
    host.start();
    try {
      const disk: BlockDevice = await host.blockDevice('benchn1', 120_000);
      if (!(disk instanceof (driver === 'virtio-blk' ? BlockProxy : VirtioDisk))) throw new Error(`benchn1 is not what ${driver} provides here`);
      // Under TCG V8 needs seconds to optimize the path (a new driver thread's isolate is still compiling): a throwaway run first.
      for (const [, load] of loads) await load(disk, { depth: 32, bytes: 4096, seconds: driver === 'virtio-blk' ? 10 : 3, warmupSeconds: 0 });
      for (const [how, load] of loads) {
        for (const depth of [1, 32]) {
          const r = await load(disk, { depth, bytes: 4096, seconds, warmupSeconds: 2 });
          const heap = r.scavenges === 0 ? `${r.heapBytesPerIo.toFixed(1)} B/I/O allocated here` : `${r.scavenges} scavenges here (>= ${r.heapBytesPerIo.toFixed(0)} B/I/O)`;
          rows.push({ load: `${how}, ${where}`, depth, ...r, note: `${r.ios} I/Os, ${r.errors} errors, ${heap}` });
        }
      }
    } finally {
      await host.shutdown();
    }
  }
  return rows;
}

async function guest(peerBinary: string, quick: boolean): Promise<number> {
  const seconds = quick ? 3 : 10;
  const upci = await upciRows(seconds);
  const root = findProjectRoot();
  const dev = await kernelVirtioBlk(root, kernelDisk);
  const kernel = new Map<number, FioResult>();
  for (const depth of [1, 32]) kernel.set(depth, await fio(dev, { rw: 'randread', bs: '4k', depth }, seconds));
  const lines = [
    `virtio-blk 4 KiB random reads, ${seconds} s per row after a throwaway run and 2 s of warm-up (fio: 1 s ramp); upci on ${guestAddress(upciDisk)}, the kernel's virtio_blk + fio (io_uring, direct=1) on the identical ${guestAddress(kernelDisk)} (${dev}); TCG guest`,
    '',
    '| upci load | QD | kernel IOPS | upci IOPS | upci / kernel | kernel p50 / p99 µs | upci p50 / p99 µs | kernel CPU µs/I/O | upci CPU µs/I/O | upci notes | kernel notes |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|',
  ];
  for (const u of upci) {
    const k = kernel.get(u.depth)!;
    lines.push(`| ${u.load} | ${u.depth} | ${k.iops.toFixed(0)} | ${u.iops.toFixed(0)} | ${(u.iops / k.iops).toFixed(2)} | ${k.p50Us.toFixed(0)} / ${k.p99Us.toFixed(0)} | ${u.p50Us} / ${u.p99Us} | ${k.cpuUsPerIo.toFixed(0)} | ${u.cpuUsPerIo.toFixed(0)} | ${u.note} | ${k.note} |`);
  }
  await kernelVirtioNet(root, kernelNic);
  lines.push('', await packetRates({
    driver: 'virtio-net',
    // Receive buffers well beyond QEMU's 256-entry queue, so the consumer's holding never runs it dry.
    options: { rxBuffers: 8192 },
    address: guestAddress(nics.find((d) => d.bind === 'vfio-pci')!),
    kernelAddress: guestAddress(kernelNic),
    peerBinary,
    count: quick ? 20_000 : 100_000,
    sites: process.argv.includes('--allocations'),
  }));
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

await benchmarkMain({ name: 'virtio', reference: '../net/peer.c', script: 'virtio.js', cpus: 2 }, guest);
