/**
 * A DmaTag over plain shared memory for unit tests of DMA users (virtio
 * queues, the kit's NIC buffers): real DmaPools, each allocation at a bus
 * address of its own; bytes() is what the device reaches at a bus address.
 */
import { DmaPool, type DmaPoolOptions } from '../../pci/dma-pool.js';
import type { DmaTag } from '../../pci/bus-dma.js';

export class MemoryTag {
  readonly alignment = 16n;
  readonly boundary = 0n;
  private next = 0x1_0000_0000;
  private readonly spaces: { bus: number; buffer: SharedArrayBuffer }[] = [];
  /** Every sync, as [ops, bus address, length]. */
  readonly syncs: [number, number, number][] = [];

  allocMemory(size: number) {
    return { buffer: new SharedArrayBuffer(size), size, freed: false, free() {} };
  }

  createMap() {
    return {
      load: (memory: { buffer: SharedArrayBuffer; size: number }) => {
        const bus = this.next;
        this.next += Math.ceil(memory.size / 2 ** 20 + 1) * 2 ** 20;
        this.spaces.push({ bus, buffer: memory.buffer });
        return { busAddress: (offset: number) => bus + offset, isLoaded: true, unload() {}, sync: (ops: number, offset: number, length: number) => void this.syncs.push([ops, bus + offset, length]) };
      },
    };
  }

  segments(bus: bigint, length: number) {
    return [{ busAddress: bus, length }];
  }

  createPool(options: DmaPoolOptions): DmaPool {
    return new DmaPool(this as unknown as DmaTag, options);
  }

  bytes(bus: number, length: number): Uint8Array {
    const space = this.spaces.find((s) => bus >= s.bus && bus + length <= s.bus + s.buffer.byteLength);
    if (space === undefined) throw new Error(`no DMA memory at 0x${bus.toString(16)}+${length}`);
    return new Uint8Array(space.buffer, bus - space.bus, length);
  }
}
