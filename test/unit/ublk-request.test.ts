/**
 * How the ublk export turns the kernel's requests (512-byte sectors) into
 * BlockDevice calls (the device's blocks), and what it answers itself
 * without reaching the device. The export's rings need /dev/ublk-control
 * (test/vm/ublk.test.ts); this is the part that needs none.
 */
import test from 'ava';
import { Subject } from 'rxjs';
import type { BlockCompletion, BlockDevice } from '../../drivers/block.js';
import { serveUblkRequest } from '../../exports/ublk-queue.js';
import * as abi from '../../kernel/linux/ublk-abi.js';

const EIO = 5;
const EOPNOTSUPP = 95;

/** A device of `blockCount` blocks that records each call and fills reads with its LBA. */
function recordingDevice(blockSize: number, blockCount: number, canDiscard: boolean) {
  const calls: string[] = [];
  const device: BlockDevice = {
    name: 'rec0n1', blockSize, blockCount, canDiscard, maxTransferBytes: 1 << 20,
    completions: new Subject<BlockCompletion>().asObservable(),
    read: (lba, blocks, into) => {
      calls.push(`read ${lba}+${blocks} into ${into?.length}`);
      into!.fill(lba & 0xff);
      return Promise.resolve(into!);
    },
    write: (lba, data) => (calls.push(`write ${lba} ${data.length}`), Promise.resolve()),
    flush: () => (calls.push('flush'), Promise.resolve()),
    discard: (lba, blocks) => (calls.push(`discard ${lba}+${blocks}`), Promise.resolve()),
    // The export does not register memory: a call here is one this test did not expect.
    register: () => {
      throw new Error('the ublk export registered memory');
    },
    allocBuffer: () => {
      throw new Error('the ublk export allocated registered memory');
    },
  };
  return { device, calls };
}

test('sectors become the device\'s blocks: reads and writes answer with the bytes moved, flush and discard with 0', async (t) => {
  const { device, calls } = recordingDevice(4096, 1000, true);
  const buffer = new Uint8Array(64 * 1024);
  t.is(await serveUblkRequest(device, { op: abi.UBLK_IO_OP_READ, sector: 80, sectors: 16 }, buffer), 8192);
  t.is(buffer[0], 10);
  t.is(buffer[8191], 10);
  t.is(buffer[8192], 0, 'nothing past the request is touched');
  t.is(await serveUblkRequest(device, { op: abi.UBLK_IO_OP_WRITE, sector: 7992, sectors: 8 }, buffer), 4096);
  t.is(await serveUblkRequest(device, { op: abi.UBLK_IO_OP_FLUSH, sector: 0, sectors: 0 }, buffer), 0);
  t.is(await serveUblkRequest(device, { op: abi.UBLK_IO_OP_DISCARD, sector: 8, sectors: 800 }, buffer), 0);
  t.deepEqual(calls, ['read 10+2 into 8192', 'write 999 4096', 'flush', 'discard 1+100']);
});

test('a request past the end, off a block boundary or larger than the tag\'s buffer gets EIO and never reaches the device', async (t) => {
  const { device, calls } = recordingDevice(4096, 1000, true);
  const buffer = new Uint8Array(64 * 1024);
  const refused = [
    { op: abi.UBLK_IO_OP_READ, sector: 8000, sectors: 8 },     // block 1000: one past the last
    { op: abi.UBLK_IO_OP_WRITE, sector: 7992, sectors: 16 },   // starts on the last block, runs past it
    { op: abi.UBLK_IO_OP_READ, sector: 4, sectors: 8 },        // half a block in
    { op: abi.UBLK_IO_OP_WRITE, sector: 0, sectors: 4 },       // half a block long
    { op: abi.UBLK_IO_OP_READ, sector: 0, sectors: 136 },      // 68 KiB into a 64 KiB buffer
    { op: abi.UBLK_IO_OP_DISCARD, sector: 7000, sectors: 1008 },
    { op: abi.UBLK_IO_OP_READ, sector: 0, sectors: 0 },
  ];
  for (const r of refused) t.is(await serveUblkRequest(device, r, buffer), -EIO, JSON.stringify(r));
  t.deepEqual(calls, []);
});

test('an operation the device lacks gets EOPNOTSUPP: discard on a device that does not discard, write-zeroes, an unknown op', async (t) => {
  const { device, calls } = recordingDevice(512, 1000, false);
  const buffer = new Uint8Array(4096);
  t.is(await serveUblkRequest(device, { op: abi.UBLK_IO_OP_DISCARD, sector: 0, sectors: 8 }, buffer), -EOPNOTSUPP);
  t.is(await serveUblkRequest(device, { op: abi.UBLK_IO_OP_WRITE_ZEROES, sector: 0, sectors: 8 }, buffer), -EOPNOTSUPP);
  t.is(await serveUblkRequest(device, { op: 99, sector: 0, sectors: 8 }, buffer), -EOPNOTSUPP);
  t.deepEqual(calls, []);
});
