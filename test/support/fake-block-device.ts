/**
 * A block device in memory, no hardware, for the block service's and the
 * service layer's unit tests (served from worker threads). Besides storing
 * blocks it: stamps the last byte of the write data it is given with 0xEE
 * (a caller's array shows the stamp only when the driver side had the
 * caller's own memory, not a copy); fails reads at LBA 666 (NVMe status),
 * 667 (a refusal), 668 (a plain TypeError); never completes LBA 777 (unless
 * made with `hangs: false`: a device that does, as a driver's next incarnation).
 * Registered memory (register()) is counted; its requests move the data
 * in place and end at once, allocating nothing (the failing and hanging
 * LBAs above go through the fake's own read() and write() on a view).
 */
import { Subject } from 'rxjs';
import { BlockRequestError, RegisteredMemory, checkRequest, sharedPages, type BlockCompletion, type BlockDevice } from '../../drivers/block.js';
import { NvmeStatusError } from '../../drivers/nvme/errors.js';

const FAKE = { blockSize: 512, blockCount: 4096, maxTransferBytes: 128 * 1024 } as const;

export interface FakeBlockDevice {
  readonly device: BlockDevice;
  /** The device's blocks. */
  readonly storage: Uint8Array;
  /** Requests whose data was a SharedArrayBuffer (the caller's own memory). */
  readonly sharedSeen: { reads: number; writes: number };
  /** register() calls, unregister() calls, and requests made through registrations. */
  readonly registrations: { registered: number; unregistered: number; requests: number };
}

export function fakeBlockDevice(name = 'fake0n1', { hangs = true } = {}): FakeBlockDevice {
  const storage = new Uint8Array(FAKE.blockSize * FAKE.blockCount);
  const sharedSeen = { reads: 0, writes: 0 };
  const registrations = { registered: 0, unregistered: 0, requests: 0 };
  const geometry = { name, ...FAKE, canDiscard: true };
  class FakeRegistration extends RegisteredMemory {
    private active = true;
    read(lba: number, blocks: number, offset: number, tag: number): boolean {
      return this.move(true, lba, blocks, offset, tag);
    }
    write(lba: number, blocks: number, offset: number, tag: number): boolean {
      return this.move(false, lba, blocks, offset, tag);
    }
    unregister(): void {
      if (this.active) registrations.unregistered++;
      this.active = false;
    }
    /**
     * In place, and ended at once (inside the call, as a device may end a
     * request), with nothing allocated: what an allocation meter sees on
     * the serving side is then the service's own. The LBAs that fail or
     * hang go through the fake's own read()/write() on a view instead.
     */
    private move(read: boolean, lba: number, blocks: number, offset: number, tag: number): boolean {
      if (!checkRequest.registeredOk(geometry, lba, blocks, offset, this.bytes.length)) checkRequest.registered(geometry, lba, blocks, offset, this.bytes.length);
      if (!this.active) throw new BlockRequestError(`${name}: not registered`, 'register it');
      registrations.requests++;
      if (lba === 666 || lba === 667 || lba === 668 || lba === 777) {
        const view = this.bytes.subarray(offset, offset + blocks * FAKE.blockSize);
        (read ? device.read(lba, blocks, view) : device.write(lba, view)).then(() => this.emitEnd(tag, undefined), (e: Error) => this.emitEnd(tag, e));
        return true;
      }
      const bytes = this.bytes;
      const at = lba * FAKE.blockSize;
      const n = blocks * FAKE.blockSize;
      if (read) {
        sharedSeen.reads++;
        for (let i = 0; i < n; i++) bytes[offset + i] = storage[at + i]!;
      } else {
        sharedSeen.writes++;
        for (let i = 0; i < n; i++) storage[at + i] = bytes[offset + i]!;
        bytes[offset + n - 1] = 0xee;
      }
      this.emitEnd(tag, undefined);
      return true;
    }
  }
  const device: BlockDevice = {
    register(memory) {
      registrations.registered++;
      return new FakeRegistration(new Uint8Array(memory));
    },
    allocBuffer: (bytes) => device.register(sharedPages(bytes)),
    name,
    ...FAKE,
    canDiscard: true,
    completions: new Subject<BlockCompletion>().asObservable(),
    read(lba, blocks, into) {
      if (lba === 666) return Promise.reject(new NvmeStatusError('Read', 2, 0x81, true));
      if (lba === 667) return Promise.reject(new BlockRequestError(`${name}: LBA 667 is refused by the fake`, 'read another LBA'));
      if (lba === 668) return Promise.reject(new TypeError('the fake has a bug at LBA 668'));
      if (lba === 777 && hangs) return new Promise(() => {});
      const out = into ?? new Uint8Array(blocks * FAKE.blockSize);
      if (out.buffer instanceof SharedArrayBuffer) sharedSeen.reads++;
      out.set(storage.subarray(lba * FAKE.blockSize, (lba + blocks) * FAKE.blockSize));
      return Promise.resolve(out);
    },
    write(lba, data) {
      if (lba === 777 && hangs) return new Promise(() => {});
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
  return { device, storage, sharedSeen, registrations };
}
