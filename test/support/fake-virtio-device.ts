/**
 * The device side of a split virtqueue for unit tests (virtio-ring.test,
 * virtio-net.test): reads published chains from the ring memory as a
 * virtio device does and completes them in whatever order a test picks.
 */
export interface Buffer3 { address: number; length: number; write: boolean }

export class FakeVirtioDevice {
  private readonly view: DataView;
  private lastAvail = 0;
  private usedIdx = 0;
  kicks = 0;

  constructor(memory: SharedArrayBuffer, private readonly size: number) {
    this.view = new DataView(memory);
  }

  private get availAt() { return 16 * this.size; }
  /** Where the used ring starts in the memory: the device is told its address (set it from the ring's usedBus - descBus). */
  usedAt = 0;

  /** New chains since the last take: [head, its buffers]. */
  take(): [number, Buffer3[]][] {
    const idx = this.view.getUint16(this.availAt + 2, true);
    const chains: [number, Buffer3[]][] = [];
    for (; this.lastAvail !== idx; this.lastAvail = (this.lastAvail + 1) & 0xffff) {
      const head = this.view.getUint16(this.availAt + 4 + 2 * (this.lastAvail % this.size), true);
      const buffers: Buffer3[] = [];
      for (let id = head, guard = 0; ; guard++) {
        if (guard > this.size) throw new Error('a looping chain');
        const at = 16 * id;
        const flags = this.view.getUint16(at + 12, true);
        buffers.push({ address: this.view.getUint32(at, true) + this.view.getUint32(at + 4, true) * 2 ** 32, length: this.view.getUint32(at + 8, true), write: (flags & 2) !== 0 });
        if ((flags & 1) === 0) break;
        id = this.view.getUint16(at + 14, true);
      }
      chains.push([head, buffers]);
    }
    return chains;
  }

  complete(head: number, written: number): void {
    const slot = this.usedAt + 4 + 8 * (this.usedIdx % this.size);
    this.view.setUint32(slot, head, true);
    this.view.setUint32(slot + 4, written, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.view.setUint16(this.usedAt + 2, this.usedIdx, true);
  }

  setNoNotify(on: boolean): void {
    this.view.setUint16(this.usedAt, on ? 1 : 0, true);
  }

  /** Test-only: a used index the device should never write. */
  forceUsedIdx(idx: number): void {
    this.view.setUint16(this.usedAt + 2, idx, true);
  }
}
