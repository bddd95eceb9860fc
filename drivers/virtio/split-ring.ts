/**
 * A virtio split virtqueue (virtio 1.x §2.7): the descriptor table, the
 * driver's (avail) ring and the device's (used) ring in one piece of DMA
 * memory, with the free-descriptor list, the 16-bit indices that wrap, and
 * the doorbell. Its indices are the kit's Ring wrapping at 2^16
 * (kit/ring.ts), its descriptors' addresses written by storeBus64.
 *
 * The device is not trusted: which descriptors form a chain, and how long
 * it is, live here in the driver's memory, not read back from the table;
 * a used element naming a descriptor that heads no chain in flight is a
 * device fault (thrown), never freed twice.
 *
 * Ordering: descriptors and the avail slot are plain stores; the avail
 * index is an Atomics.store (a full fence on x86, and a store the JIT may
 * not move), so the device sees the chain before the index that publishes
 * it; the used index is an Atomics.load before its elements are read.
 */
import { storeBus64 } from '../kit/bus-address.js';
import { Ring } from '../kit/ring.js';

const DESC_BYTES = 16;
const F_NEXT = 1;
const F_WRITE = 2;
/** The device asks not to be notified (used ring flags). */
const USED_F_NO_NOTIFY = 1;

export class SplitRing {
  /** Bytes of DMA memory for a ring of `size`, laid out desc | avail | used. */
  static bytes(size: number): number {
    return SplitRing.usedOffset(size) + 6 + 8 * size;
  }

  /**
   * Where the used ring starts: 4-aligned (§2.7) and 4 past a multiple of
   * 8, so that its 8-byte elements (after flags and index) are 8-aligned and
   * none straddles a page. QEMU 7.2 behind its emulated IOMMU writes a
   * page-straddling element at a wrong address: a used ring starting on a
   * multiple of 8 in a 1024-entry queue lost every 512th completion, each a
   * DMAR write fault at IOVA 0x0 or 0x1000 (the element's offset in the
   * ring, without the ring's base).
   */
  private static usedOffset(size: number): number {
    const at = Math.ceil((DESC_BYTES * size + 6 + 2 * size) / 4) * 4;
    return at % 8 === 4 ? at : at + 4;
  }

  readonly descBus: number;
  readonly availBus: number;
  readonly usedBus: number;
  /** The descriptor table as words (address, length) and as halves (flags, next: halves 6 and 7 of each). */
  private readonly descWords: Uint32Array;
  private readonly descHalves: Uint16Array;
  private readonly availIdx: Uint16Array;
  private readonly availRing: Uint16Array;
  private readonly usedFlags: Uint16Array;
  private readonly usedIdx: Uint16Array;
  private readonly usedRing: Uint32Array;
  /** Free descriptors as a stack: freeStack[0..freeCount). */
  private readonly freeStack: Uint16Array;
  private freeCount: number;
  /** Per head: descriptors in its chain while in flight, else 0. */
  private readonly chainLength: Uint16Array;
  /** Per descriptor: the next of its chain, as this driver linked it. */
  private readonly nextOf: Uint16Array;
  /** Tail: the avail index this driver has published; head: the used index it has consumed. */
  private readonly indices: Ring;

  constructor(
    readonly size: number,
    memory: SharedArrayBuffer,
    offset: number,
    busAddress: number,
    /** The doorbell: tells the device this queue has new chains. */
    private readonly notify: () => void,
  ) {
    if (!(Number.isInteger(size) && size >= 1 && size <= 32768 && (size & (size - 1)) === 0)) {
      throw new RangeError(`a split ring has a power-of-two size up to 32768, not ${size}`);
    }
    if (offset % 16 !== 0 || busAddress % 16 !== 0) throw new RangeError('a split ring\'s descriptor table is 16-byte aligned');
    const used = offset + SplitRing.usedOffset(size);
    this.descBus = busAddress;
    this.availBus = busAddress + DESC_BYTES * size;
    this.usedBus = busAddress + SplitRing.usedOffset(size);
    this.descWords = new Uint32Array(memory, offset, (DESC_BYTES / 4) * size);
    this.descHalves = new Uint16Array(memory, offset, (DESC_BYTES / 2) * size);
    this.indices = new Ring(size, 0x10000);
    const avail = offset + DESC_BYTES * size;
    new Uint16Array(memory, avail, 1)[0] = 0; // flags: interrupts wanted
    this.availIdx = new Uint16Array(memory, avail + 2, 1);
    this.availRing = new Uint16Array(memory, avail + 4, size);
    this.usedFlags = new Uint16Array(memory, used, 1);
    this.usedIdx = new Uint16Array(memory, used + 2, 1);
    this.usedRing = new Uint32Array(memory, used + 4, 2 * size);
    this.freeStack = Uint16Array.from({ length: size }, (_, i) => size - 1 - i);
    this.freeCount = size;
    this.chainLength = new Uint16Array(size);
    this.nextOf = new Uint16Array(size);
  }

  /** Descriptors free now. */
  get free(): number {
    return this.freeCount;
  }

  /** Chains published and not yet returned by the device. */
  get inFlight(): number {
    return this.indices.count;
  }

  /**
   * Publishes one chain of `count` buffers: addresses[i], lengths[i], the
   * device writing those from `writableFrom` on (virtio puts every buffer
   * the device reads before those it writes). Returns the chain's head,
   * the id its completion comes back with, or -1 when too few descriptors
   * are free (nothing was taken). No doorbell: kick() after a batch.
   */
  add(count: number, addresses: ArrayLike<number>, lengths: ArrayLike<number>, writableFrom: number): number {
    if (count < 1 || count > this.freeCount) return -1;
    let head = -1;
    let prev = -1;
    for (let i = 0; i < count; i++) {
      const id = this.freeStack[--this.freeCount]!;
      const w = id * (DESC_BYTES / 4);
      storeBus64(this.descWords, w, addresses, i);
      this.descWords[w + 2] = lengths[i]!;
      this.descHalves[2 * w + 6] = i >= writableFrom ? F_WRITE : 0;
      if (prev < 0) head = id;
      else {
        this.descHalves[8 * prev + 6]! |= F_NEXT;
        this.descHalves[8 * prev + 7] = id;
        this.nextOf[prev] = id;
      }
      prev = id;
    }
    this.chainLength[head] = count;
    this.availRing[this.indices.push()] = head;
    Atomics.store(this.availIdx, 0, this.indices.tail);
    return head;
  }

  /** Rings the doorbell unless the device said it needs none. */
  kick(): void {
    if ((Atomics.load(this.usedFlags, 0) & USED_F_NO_NOTIFY) === 0) this.notify();
  }

  /**
   * Takes every chain the device has returned, in its order: frees its
   * descriptors and calls `done(head, written)` (the bytes it wrote).
   * Returns how many. Throws when the device returns what is not in flight.
   */
  reap(done: (head: number, written: number) => void): number {
    const end = Atomics.load(this.usedIdx, 0);
    let n = 0;
    if (this.indices.ahead(end) > this.inFlight) {
      throw new Error(`virtqueue: the device's used index ${end} is ahead of the ${this.inFlight} chain(s) in flight since ${this.indices.head}`);
    }
    while (this.indices.head !== end) {
      const slot = this.indices.shift() * 2;
      const head = this.usedRing[slot]!;
      const written = this.usedRing[slot + 1]!;
      const length = head < this.size ? this.chainLength[head]! : 0;
      if (length === 0) throw new Error(`virtqueue: the device returned descriptor ${head}, which heads no chain in flight`);
      this.chainLength[head] = 0;
      for (let id = head, i = 0; i < length; i++, id = this.nextOf[id]!) this.freeStack[this.freeCount++] = id;
      n++;
      done(head, written);
    }
    return n;
  }
}
