/**
 * A worker thread serving a fake block device (memory, no hardware) through
 * actors/block-service.ts, for the proxy's unit tests. Besides storing
 * blocks it: stamps the last byte of the write data it is given with 0xEE
 * (a caller's array shows the stamp only when the driver side had the
 * caller's own memory, not a copy); fails reads at LBA 666 (NVMe status),
 * 667 (a refusal), 668 (a plain TypeError); never completes LBA 777. It
 * counts the messages it posts; {type:'stats'} gets the count back.
 */
import { MessagePort, parentPort } from 'node:worker_threads';
import { Subject } from 'rxjs';
import { serveBlockDevice } from '../../actors/block-service.js';
import { BlockRequestError, type BlockCompletion, type BlockDevice } from '../../drivers/block.js';
import { NvmeStatusError } from '../../drivers/nvme/errors.js';

const FAKE = { blockSize: 512, blockCount: 4096, maxTransferBytes: 128 * 1024 } as const;

let posted = 0;
const post = MessagePort.prototype.postMessage;
MessagePort.prototype.postMessage = function (this: MessagePort, ...args: Parameters<MessagePort['postMessage']>) {
  posted++;
  return post.apply(this, args);
};

const storage = new Uint8Array(FAKE.blockSize * FAKE.blockCount);
const sharedSeen = { reads: 0, writes: 0 };
const device: BlockDevice = {
  name: 'fake0n1',
  ...FAKE,
  canDiscard: true,
  completions: new Subject<BlockCompletion>().asObservable(),
  read(lba, blocks, into) {
    if (lba === 666) return Promise.reject(new NvmeStatusError('Read', 2, 0x81, true));
    if (lba === 667) return Promise.reject(new BlockRequestError('fake0n1: LBA 667 is refused by the fake', 'read another LBA'));
    if (lba === 668) return Promise.reject(new TypeError('the fake has a bug at LBA 668'));
    if (lba === 777) return new Promise(() => {});
    const out = into ?? new Uint8Array(blocks * FAKE.blockSize);
    if (out.buffer instanceof SharedArrayBuffer) sharedSeen.reads++;
    out.set(storage.subarray(lba * FAKE.blockSize, (lba + blocks) * FAKE.blockSize));
    return Promise.resolve(out);
  },
  write(lba, data) {
    if (lba === 777) return new Promise(() => {});
    storage.set(data, lba * FAKE.blockSize);
    if (data.buffer instanceof SharedArrayBuffer) sharedSeen.writes++;
    data[data.length - 1] = 0xee;
    return Promise.resolve();
  },
  flush: () => Promise.resolve(),
  discard(lba, blocks) {
    storage.fill(0, lba * FAKE.blockSize, (lba + blocks) * FAKE.blockSize);
    return Promise.resolve();
  },
};

const served = serveBlockDevice(device);
parentPort!.postMessage({ type: 'setup', setup: served.setup }, [...served.transfer]);
parentPort!.on('message', (m: { type: 'stats' } | { type: 'stop' }) => {
  if (m.type === 'stop') {
    served.stop();
    parentPort!.close();
    return;
  }
  parentPort!.postMessage({ type: 'stats', posted: posted + 1, sharedSeen });
});
