/**
 * Each bus_space access reaches the device exactly once, in program order,
 * with no hidden read before a write, and at its own width wherever the
 * device implements that width: checked against QEMU's own trace of the
 * device's region (this suite runs in a VM booted with memory_region_ops_*
 * tracing). QEMU traces the access the device model receives, after it has
 * split or widened the CPU's access to the sizes the model implements
 * (MemoryRegionOps.impl), so the widths are checked where they survive:
 * edu 4 and 8 bytes (hw/misc/edu.c implements 4..8), nvme 2, 4 and 8
 * (hw/nvme/ctrl.c implements 2..8), pci-testdev 1 byte over MMIO and over
 * I/O ports (hw/misc/pci-testdev.c implements bytes only: a wider access
 * arrives as that many consecutive bytes, each once, which is checked too).
 */
import test from 'ava';
import { readFileSync, statSync } from 'node:fs';
import type { BusSpace } from '../../pci/bus-space.js';
import { PciDevice } from '../../pci/device.js';
import { bench } from '../vm/devices.js';

interface Access { op: 'read' | 'write'; addr: bigint; value: bigint; size: number }

const traceLog = process.env.UPCI_QEMU_TRACE;
const ROUNDS = 20_000;

/** Accesses to QEMU region `region` logged while `work` ran, addresses relative to `base`. */
function traced(region: string, base: bigint, work: () => void): Access[] {
  if (traceLog === undefined) throw new Error('UPCI_QEMU_TRACE is not set: this suite needs the VM booted with tracing');
  const start = statSync(traceLog).size;
  work();
  const text = readFileSync(traceLog).subarray(start).toString('latin1');
  const accesses: Access[] = [];
  const line = new RegExp(`memory_region_ops_(read|write) .*? addr (0x[0-9a-f]+) value (0x[0-9a-f]+) size (\\d+) name '${region}'`, 'g');
  for (let m; (m = line.exec(text)); ) {
    const addr = BigInt(m[2]!);
    accesses.push({ op: m[1] as Access['op'], addr: addr >= base ? addr - base : addr, value: BigInt(m[3]!), size: Number(m[4]) });
  }
  return accesses;
}

const summary = (log: Access[]) => log.map((a) => `${a.op}${a.size}@${a.addr.toString(16)}`);

/** Opens `address`, maps BAR `index`, and gives its handle and bus base. */
function withBar<T>(address: string, index: number, use: (bar: BusSpace, base: bigint) => T): T {
  const dev = PciDevice.open(address);
  try {
    const bar = dev.mapBar(index);
    return use(bar, dev.bars().find((b) => b.index === index)!.base);
  } finally {
    dev.close();
  }
}

test('edu: reads and writes of 4 and 8 bytes are one access each, of that width, with no hidden read before a write', (t) => {
  withBar(bench.edu, 0, (bar, base) => {
    // Enough iterations for V8's optimizing tiers to compile the access paths.
    const log = traced('edu-mmio', base, () => {
      for (let i = 0; i < ROUNDS; i++) bar.write4(0x04, 0xa5a50000 + i);
      for (let i = 0; i < ROUNDS; i++) bar.read4(0x04);
      bar.write8(0x80, 0x1122334455667788n);
      bar.read8(0x80);
    });
    t.deepEqual(summary(log), [
      ...Array.from({ length: ROUNDS }, () => 'write4@4'),
      ...Array.from({ length: ROUNDS }, () => 'read4@4'),
      'write8@80',
      'read8@80',
    ]);
    t.deepEqual(log.slice(0, ROUNDS).map((a) => a.value), Array.from({ length: ROUNDS }, (_, i) => BigInt(0xa5a50000 + i)));
    t.is(log[2 * ROUNDS]?.value, 0x1122334455667788n);
  });
});

test('nvme: 2-, 4- and 8-byte reads and a 2-byte write are one access each, of that width', (t) => {
  // The controller stays disabled (CC.EN = 0): AQA may be written, the capability registers read.
  withBar(bench.nvme, 0, (bar, base) => {
    const log = traced('nvme', base, () => {
      for (let i = 0; i < ROUNDS; i++) bar.write2(0x24, i & 0xfff);
      for (let i = 0; i < ROUNDS; i++) bar.read2(0x24);
      bar.read2(0x02);
      bar.read4(0x08);
      bar.read8(0x00);
    });
    t.deepEqual(summary(log), [
      ...Array.from({ length: ROUNDS }, () => 'write2@24'),
      ...Array.from({ length: ROUNDS }, () => 'read2@24'),
      'read2@2',
      'read4@8',
      'read8@0',
    ]);
    t.deepEqual(log.slice(0, ROUNDS).map((a) => a.value), Array.from({ length: ROUNDS }, (_, i) => BigInt(i & 0xfff)));
  });
});

for (const [kind, index, region] of [['MMIO', 0, 'pci-testdev-mmio'], ['I/O port', 1, 'pci-testdev-portio']] as const) {
  test(`pci-testdev ${kind}: 1-byte accesses are one access each; wider ones arrive as their bytes, each once, in order`, (t) => {
    withBar(bench.testdev, index, (bar, base) => {
      t.is(bar.kind, kind === 'MMIO' ? 'mapped' : 'trapped');
      const log = traced(region, base, () => {
        for (let i = 0; i < 1000; i++) bar.write1(0, 0); // selects test 0 (its header: width at 1, offset at 4, data at 8, count at 12)
        for (let i = 0; i < 1000; i++) bar.read1(1);
        bar.read2(2);
        bar.read4(4);
        bar.read4(12);
      });
      t.deepEqual(summary(log), [
        ...Array.from({ length: 1000 }, () => 'write1@0'),
        ...Array.from({ length: 1000 }, () => 'read1@1'),
        'read1@2', 'read1@3',
        'read1@4', 'read1@5', 'read1@6', 'read1@7',
        'read1@c', 'read1@d', 'read1@e', 'read1@f',
      ]);
      t.true(log.slice(0, 1000).every((a) => a.value === 0n), 'the value written is the one traced');
    });
  });
}
