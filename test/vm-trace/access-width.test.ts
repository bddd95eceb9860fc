/**
 * Every bus_space access is exactly one device access of its width, in
 * program order: checked against QEMU's own trace of edu's MMIO region
 * (this suite runs in a VM booted with memory_region_ops_* tracing).
 */
import test from 'ava';
import { readFileSync, statSync } from 'node:fs';
import { PciDevice } from '../../pci/device.js';
import { bench } from '../vm/devices.js';

interface Access { op: 'read' | 'write'; addr: bigint; value: bigint; size: number }

const traceLog = process.env.UPCI_QEMU_TRACE;
const ROUNDS = 20_000;

/** edu-mmio accesses QEMU logged while `work` ran. */
function traced(work: () => void): Access[] {
  if (traceLog === undefined) throw new Error('UPCI_QEMU_TRACE is not set: this suite needs the VM booted with tracing');
  const start = statSync(traceLog).size;
  work();
  const text = readFileSync(traceLog).subarray(start).toString('latin1');
  const accesses: Access[] = [];
  const line = /memory_region_ops_(read|write) .*? addr (0x[0-9a-f]+) value (0x[0-9a-f]+) size (\d+) name 'edu-mmio'/g;
  for (let m; (m = line.exec(text)); ) accesses.push({ op: m[1] as Access['op'], addr: BigInt(m[2]!), value: BigInt(m[3]!), size: Number(m[4]) });
  return accesses;
}

test('reads and writes of 4 and 8 bytes are one access each, of that width, with no hidden read before a write', (t) => {
  const edu = PciDevice.open(bench.edu);
  try {
    const bar = edu.mapBar(0);
    const base = edu.bars().find((b) => b.index === 0)!.base;
    const at = (a: Access) => (a.addr >= base ? a.addr - base : a.addr);
    // Enough iterations for V8's optimizing tiers to compile the access paths.
    const log = traced(() => {
      for (let i = 0; i < ROUNDS; i++) bar.write4(0x04, 0xa5a50000 + i);
      for (let i = 0; i < ROUNDS; i++) bar.read4(0x04);
      bar.write8(0x80, 0x1122334455667788n);
      bar.read8(0x80);
    });
    const summary = log.map((a) => `${a.op}${a.size}@${at(a).toString(16)}`);
    const expected = [
      ...Array.from({ length: ROUNDS }, () => 'write4@4'),
      ...Array.from({ length: ROUNDS }, () => 'read4@4'),
      'write8@80',
      'read8@80',
    ];
    t.deepEqual(summary, expected);
    t.deepEqual(log.slice(0, ROUNDS).map((a) => a.value), Array.from({ length: ROUNDS }, (_, i) => BigInt(0xa5a50000 + i)));
    t.is(log[2 * ROUNDS]?.value, 0x1122334455667788n);
  } finally {
    edu.close();
  }
});
