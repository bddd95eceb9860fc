/**
 * A descriptor ring's positions: head (where the consumer is), tail
 * (where the producer is), how far apart they are, the wrap, and the
 * doorbell that tells the other side. The rings of NVMe (a submission
 * queue's tail, a completion queue's head and phase tag), e1000e (RDT/TDT
 * and the descriptors it completed) and virtio's split ring (16-bit
 * indices that wrap at 2^16, not at the ring's size) are this one shape
 * with a different `wrap`:
 *
 * - wrap = size: positions are slots (e1000e, an NVMe submission queue);
 * - wrap = 2 * size: the head's pass over the ring is one bit, NVMe's
 *   phase tag (`phase`);
 * - wrap = 2^16: virtio's free-running avail and used indices.
 *
 * Positions are small integers: nothing here allocates.
 */
import type { DmaTag } from '../../pci/bus-dma.js';
import type { BusSpace } from '../../pci/bus-space.js';
import type { DmaPool, DmaPoolOptions } from '../../pci/dma-pool.js';

/** A register the ring's position is written to (NVMe's doorbells, e1000e's RDT and TDT). */
export interface Doorbell {
  readonly space: Pick<BusSpace, 'write4'>;
  readonly offset: number;
}

export class Ring {
  /** Positions in [0, wrap). */
  head = 0;
  tail = 0;

  constructor(
    /** Entries in the ring. */
    readonly size: number,
    /** Where positions wrap: a multiple of `size`. */
    readonly wrap: number = size,
    private readonly doorbell?: Doorbell,
  ) {
    if (!(Number.isInteger(size) && size >= 1 && Number.isInteger(wrap) && wrap % size === 0)) {
      throw new RangeError(`a ring of ${size} entries cannot wrap at ${wrap}: the wrap is a whole multiple of the size`);
    }
  }

  /** Entries between head and tail: produced, not yet consumed. */
  get count(): number {
    const d = this.tail - this.head;
    return d < 0 ? d + this.wrap : d;
  }

  /** How far `position` (a position the other side published, as virtio's used index) is ahead of the head. */
  ahead(position: number): number {
    const d = position - this.head;
    return d < 0 ? d + this.wrap : d;
  }

  get headSlot(): number {
    return this.head % this.size;
  }

  /** The phase tag the consumer expects at the head (wrap = 2 * size): 1 on the first pass over the ring, 0 on the second, as NVMe's completion queue. */
  get phase(): number {
    return this.head < this.size ? 1 : 0;
  }

  /** Produces one entry: returns the slot it goes in and moves the tail. */
  push(): number {
    const slot = this.tail % this.size;
    this.tail = this.tail + 1 === this.wrap ? 0 : this.tail + 1;
    return slot;
  }

  /** Consumes one entry: returns its slot and moves the head. */
  shift(): number {
    const slot = this.head % this.size;
    this.head = this.head + 1 === this.wrap ? 0 : this.head + 1;
    return slot;
  }

  /** Writes the tail's slot to the doorbell (a producer's: NVMe's SQ tail, e1000e's RDT and TDT). */
  ringTail(): void {
    this.doorbell!.space.write4(this.doorbell!.offset, this.tail % this.size);
  }

  /** Writes the head's slot to the doorbell (a consumer's: NVMe's CQ head). */
  ringHead(): void {
    this.doorbell!.space.write4(this.doorbell!.offset, this.head % this.size);
  }

  /** Empty again, at position 0 (after the device's ring was reset). */
  reset(): void {
    this.head = 0;
    this.tail = 0;
  }
}

/** A ring whose entries live in DMA memory of its own: one pool entry, its bus address computed once, its words in place. */
export class DescriptorRing extends Ring {
  readonly pool: DmaPool;
  /** The ring's memory as 32-bit words: entry i at i * entryBytes / 4. */
  readonly words: Uint32Array;

  constructor(tag: DmaTag, size: number, readonly entryBytes: number, access: DmaPoolOptions['access'], wrap?: number, doorbell?: Doorbell) {
    super(size, wrap ?? size, doorbell);
    this.pool = tag.createPool({ entrySize: size * entryBytes, entries: 1, access });
    this.words = new Uint32Array(this.pool.buffer, 0, (size * entryBytes) / 4);
  }

  /** The bus address of entry 0. */
  get bus(): number {
    return this.pool.busAddresses[0]!;
  }

  /** Bytes of the whole ring. */
  get bytes(): number {
    return this.size * this.entryBytes;
  }

  free(): void {
    this.pool.free();
  }
}
