// DMA benchmark: upci's bus_dma against a C program doing the same with raw VFIO
// ioctls (vm/benchmarks/dma-ref.c), both on edu in one VM run.
//
//   npm run build && node dist/vm/benchmarks/dma.js [--quick]
//
// The harness (harness.ts) builds the C reference and runs this script in the
// bench VM with --guest, which runs the C binary, then the upci side, and
// prints a markdown table.
//
// edu starts every DMA on a timer 100 ms (virtual time) after the command
// write, so the copy rows measure edu, not the driver stack; and QEMU 7.2's edu
// refuses (aborts QEMU on) a transfer that ends at the end of its 4 KiB buffer,
// so the "4 KiB" transfers move 4095 bytes.
import { execFileSync } from 'node:child_process';
import { EDU } from '../../drivers/edu-registers.js';
import { benchmarkMain, eduAddress } from './harness.js';

const XFER = 4095;

interface Result {
  impl: 'c' | 'upci';
  mapOpsPerSec: number;
  allocOpsPerSec: number;
  toDeviceUs: number;
  toRamUs: number;
  copyOk: boolean;
}

async function guest(refBinary: string, quick: boolean): Promise<number> {
  const { PciDevice } = await import('../../pci/device.js');
  const { BusDma, DmaSync } = await import('../../pci/bus-dma.js');
  const { allocShared } = await import('../../shm/mapping.js');
  const address = eduAddress;
  const mapIters = quick ? 200 : 2000;
  const allocIters = quick ? 100 : 1000;
  const transfers = quick ? 5 : 20;

  const cOut = execFileSync(refBinary, [address, String(mapIters), String(allocIters), String(transfers), String(XFER)], { encoding: 'utf8' });
  const c = JSON.parse(cOut.trim().split('\n').pop()!) as Result;

  const edu = PciDevice.open(address);
  let upci: Result;
  try {
    const bar = edu.mapBar(0);
    const dma = BusDma.forDevice(edu);
    const tag = dma.createTag({ alignment: 4096, addressLimit: EDU.DMA_LIMIT, maxSegments: 1 });
    const map = tag.createMap(4096);
    const page = allocShared(4096);
    // Warm-up long enough for V8 to optimize the path (under TCG a short one measures the interpreter).
    for (let i = 0; i < 3 * mapIters; i++) map.load(page).unload();
    let t0 = performance.now();
    for (let i = 0; i < mapIters; i++) map.load(page).unload();
    const mapS = (performance.now() - t0) / 1000;

    for (let i = 0; i < 3 * allocIters; i++) tag.allocMemory(4096).free();
    t0 = performance.now();
    for (let i = 0; i < allocIters; i++) tag.allocMemory(4096).free();
    const allocS = (performance.now() - t0) / 1000;

    const src = tag.allocMemory(4096);
    const dst = tag.allocMemory(4096);
    const s = new Uint8Array(src.buffer);
    for (let i = 0; i < 4096; i++) s[i] = (i * 7 + 3) & 0xff;
    const out = tag.createMap().load(src);
    const back = tag.createMap().load(dst);
    const run = (from: bigint, to: bigint, toRam: boolean) => {
      bar.write8(EDU.DMA_SRC, from);
      bar.write8(EDU.DMA_DST, to);
      bar.write4(EDU.DMA_COUNT, XFER);
      bar.write4(EDU.DMA_CMD, EDU.DMA_RUN | (toRam ? EDU.DMA_TO_RAM : 0));
      while (bar.read4(EDU.DMA_CMD) & EDU.DMA_RUN) { /* poll, as the C reference does */ }
    };
    dma.enableBusMaster();
    let toDev = 0;
    let toRam = 0;
    for (let i = 0; i < transfers; i++) {
      t0 = performance.now();
      out.sync(DmaSync.PREWRITE);
      run(out.segments[0]!.busAddress, EDU.BUFFER, false);
      out.sync(DmaSync.POSTWRITE);
      const t1 = performance.now();
      back.sync(DmaSync.PREREAD);
      run(EDU.BUFFER, back.segments[0]!.busAddress, true);
      back.sync(DmaSync.POSTREAD);
      toDev += t1 - t0;
      toRam += performance.now() - t1;
    }
    dma.disableBusMaster();
    const d = new Uint8Array(dst.buffer);
    let ok = true;
    for (let i = 0; i < XFER; i++) if (d[i] !== s[i]) ok = false;
    upci = { impl: 'upci', mapOpsPerSec: mapIters / mapS, allocOpsPerSec: allocIters / allocS, toDeviceUs: (toDev / transfers) * 1000, toRamUs: (toRam / transfers) * 1000, copyOk: ok };
  } finally {
    edu.close();
  }

  const kib = (us: number) => ((XFER / 1024) / (us / 1e6)).toFixed(1);
  const rows: [string, string, string, number][] = [
    ['map+unmap 4 KiB (load/unload of a SharedArrayBuffer vs MAP_DMA+UNMAP_DMA), ops/s', c.mapOpsPerSec.toFixed(0), upci.mapOpsPerSec.toFixed(0), upci.mapOpsPerSec / c.mapOpsPerSec],
    ['alloc+free 4 KiB DMA memory (mmap+MAP_DMA+UNMAP_DMA+munmap), ops/s', c.allocOpsPerSec.toFixed(0), upci.allocOpsPerSec.toFixed(0), upci.allocOpsPerSec / c.allocOpsPerSec],
    [`edu DMA RAM→device, ${XFER} B, µs per transfer`, c.toDeviceUs.toFixed(0), upci.toDeviceUs.toFixed(0), c.toDeviceUs / upci.toDeviceUs],
    [`edu DMA device→RAM, ${XFER} B, µs per transfer`, c.toRamUs.toFixed(0), upci.toRamUs.toFixed(0), c.toRamUs / upci.toRamUs],
    [`edu DMA throughput (both directions), KiB/s`, kib((c.toDeviceUs + c.toRamUs) / 2), kib((upci.toDeviceUs + upci.toRamUs) / 2), (c.toDeviceUs + c.toRamUs) / (upci.toDeviceUs + upci.toRamUs)],
  ];
  const lines = [
    `DMA benchmark on edu ${address} (TCG guest; ${mapIters} map ops, ${allocIters} allocs, ${transfers} transfers each way; copies verified: C ${c.copyOk}, upci ${upci.copyOk})`,
    '',
    '| operation | C (raw VFIO) | upci | upci / C (speed) |',
    '|---|---:|---:|---:|',
    ...rows.map(([op, cv, uv, ratio]) => `| ${op} | ${cv} | ${uv} | ${ratio.toFixed(2)} |`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  return c.copyOk && upci.copyOk ? 0 : 1;
}

await benchmarkMain({ name: 'dma', reference: 'dma-ref.c', script: 'dma.js' }, guest);
