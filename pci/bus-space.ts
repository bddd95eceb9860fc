/**
 * bus_space(9) for userland: one handle type for memory BARs mapped as
 * SharedArrayBuffers and for regions the kernel mediates (I/O-port BARs,
 * MMIO that may not be mmapped).
 *
 * Every access is exactly one access of its width, in program order. Mapped
 * reads are Atomics.load on typed arrays: one plain load that the JIT may not
 * elide, merge or move. Mapped writes are plain typed-array element stores,
 * not Atomics.store: a sequentially consistent store compiles to a locked
 * xchg on x86, which reads the register before writing it (QEMU's MMIO trace
 * shows the extra read), and a register with read side effects would see it.
 * V8 keeps every typed-array element store, and test/vm-trace holds it to
 * that against the device's own trace.
 */
import { UpciError } from '../kernel/errors.js';
import type { DeviceFile } from '../kernel/port.js';
import { revoke } from '../shm/mapping.js';

export type Width = 1 | 2 | 4 | 8;
export type NarrowWidth = 1 | 2 | 4;

export interface BusSpace {
  readonly kind: 'mapped' | 'trapped';
  /** Bytes addressable through this handle. */
  readonly size: number;
  readonly released: boolean;
  read1(offset: number): number;
  read2(offset: number): number;
  read4(offset: number): number;
  read8(offset: number): bigint;
  write1(offset: number, value: number): void;
  write2(offset: number, value: number): void;
  write4(offset: number, value: number): void;
  write8(offset: number, value: bigint): void;
  /** `count` reads of the one register at `offset` (bus_space_read_multi). */
  readMulti(width: NarrowWidth, offset: number, count: number): number[];
  /** `count` consecutive registers starting at `offset` (bus_space_read_region). */
  readRegion(width: NarrowWidth, offset: number, count: number): number[];
  writeMulti(width: NarrowWidth, offset: number, values: ArrayLike<number>): void;
  writeRegion(width: NarrowWidth, offset: number, values: ArrayLike<number>): void;
  /** Orders every access before it against every access after it (bus_space_barrier). */
  barrier(): void;
  /** Cuts the handle off from the device; later accesses throw. */
  release(): void;
}

/** A full fence: a sequentially consistent read-modify-write (a locked instruction on x86). */
const fenceCell = new Int32Array(new SharedArrayBuffer(4));

abstract class BaseSpace implements BusSpace {
  abstract readonly kind: 'mapped' | 'trapped';
  released = false;

  constructor(
    readonly size: number,
    protected readonly label: string,
  ) {}

  /** Throws unless `length` bytes at `offset` are in range and `offset` is aligned to the access width. */
  protected check(offset: number, width: number, length = width): void {
    if (this.released) {
      throw new UpciError('RELEASED', `${this.label} was released; its registers are no longer reachable`, 'map the BAR again from an open device');
    }
    if (!(offset >= 0 && offset + length <= this.size) || offset % width !== 0) {
      throw new UpciError(
        'OUT_OF_RANGE',
        `${this.label}: ${length === width ? `a ${width}-byte access` : `${length} bytes`} at 0x${Number(offset).toString(16)} is ${offset % width !== 0 ? 'not aligned to its width' : `outside the ${this.size}-byte region`}`,
        `use a ${width}-aligned offset below 0x${(this.size - length + 1).toString(16)}`,
      );
    }
  }

  abstract read1(offset: number): number;
  abstract read2(offset: number): number;
  abstract read4(offset: number): number;
  abstract read8(offset: number): bigint;
  abstract write1(offset: number, value: number): void;
  abstract write2(offset: number, value: number): void;
  abstract write4(offset: number, value: number): void;
  abstract write8(offset: number, value: bigint): void;

  private readNarrow(width: NarrowWidth, offset: number): number {
    return width === 1 ? this.read1(offset) : width === 2 ? this.read2(offset) : this.read4(offset);
  }

  private writeNarrow(width: NarrowWidth, offset: number, value: number): void {
    if (width === 1) this.write1(offset, value);
    else if (width === 2) this.write2(offset, value);
    else this.write4(offset, value);
  }

  readMulti(width: NarrowWidth, offset: number, count: number): number[] {
    return Array.from({ length: count }, () => this.readNarrow(width, offset));
  }

  readRegion(width: NarrowWidth, offset: number, count: number): number[] {
    this.check(offset, width, width * count);
    return Array.from({ length: count }, (_, i) => this.readNarrow(width, offset + i * width));
  }

  writeMulti(width: NarrowWidth, offset: number, values: ArrayLike<number>): void {
    for (let i = 0; i < values.length; i++) this.writeNarrow(width, offset, values[i]!);
  }

  writeRegion(width: NarrowWidth, offset: number, values: ArrayLike<number>): void {
    this.check(offset, width, width * values.length);
    for (let i = 0; i < values.length; i++) this.writeNarrow(width, offset + i * width, values[i]!);
  }

  barrier(): void {
    Atomics.add(fenceCell, 0, 0);
  }

  abstract release(): void;
}

/** A memory BAR mapped into the process: accesses are plain loads and stores to the device. */
export class MappedSpace extends BaseSpace {
  readonly kind = 'mapped';
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly u64: BigUint64Array;

  constructor(
    /** The mapping itself: post it to a worker and it sees the same registers. */
    readonly buffer: SharedArrayBuffer,
    size: number,
    label: string,
  ) {
    super(size, label);
    this.u8 = new Uint8Array(buffer);
    this.u16 = new Uint16Array(buffer);
    this.u32 = new Uint32Array(buffer);
    this.u64 = new BigUint64Array(buffer);
  }

  read1(offset: number): number {
    this.check(offset, 1);
    return Atomics.load(this.u8, offset);
  }

  read2(offset: number): number {
    this.check(offset, 2);
    return Atomics.load(this.u16, offset >>> 1);
  }

  read4(offset: number): number {
    this.check(offset, 4);
    return Atomics.load(this.u32, offset >>> 2);
  }

  read8(offset: number): bigint {
    this.check(offset, 8);
    return Atomics.load(this.u64, offset >>> 3);
  }

  write1(offset: number, value: number): void {
    this.check(offset, 1);
    this.u8[offset] = value;
  }

  write2(offset: number, value: number): void {
    this.check(offset, 2);
    this.u16[offset >>> 1] = value;
  }

  write4(offset: number, value: number): void {
    this.check(offset, 4);
    this.u32[offset >>> 2] = value;
  }

  write8(offset: number, value: bigint): void {
    this.check(offset, 8);
    this.u64[offset >>> 3] = value;
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    revoke(this.buffer);
  }
}

/**
 * A region reached through the kernel (pread/pwrite on the device file): I/O
 * ports without iopl(2), and MMIO the kernel will not let us mmap.
 */
export class TrappedSpace extends BaseSpace {
  readonly kind = 'trapped';
  private readonly scratch = Buffer.alloc(8);

  constructor(
    private readonly device: DeviceFile,
    private readonly regionIndex: number,
    size: number,
    label: string,
  ) {
    super(size, label);
  }

  private load(offset: number, width: Width): Buffer {
    this.check(offset, width);
    const buf = this.scratch.subarray(0, width);
    this.device.readRegion(this.regionIndex, offset, buf);
    return buf;
  }

  private store(offset: number, width: Width, fill: (buf: Buffer) => void): void {
    this.check(offset, width);
    const buf = this.scratch.subarray(0, width);
    fill(buf);
    this.device.writeRegion(this.regionIndex, offset, buf);
  }

  read1(offset: number): number {
    return this.load(offset, 1).readUInt8(0);
  }

  read2(offset: number): number {
    return this.load(offset, 2).readUInt16LE(0);
  }

  read4(offset: number): number {
    return this.load(offset, 4).readUInt32LE(0);
  }

  read8(offset: number): bigint {
    return this.load(offset, 8).readBigUInt64LE(0);
  }

  write1(offset: number, value: number): void {
    this.store(offset, 1, (b) => b.writeUInt8(value & 0xff, 0));
  }

  write2(offset: number, value: number): void {
    this.store(offset, 2, (b) => b.writeUInt16LE(value & 0xffff, 0));
  }

  write4(offset: number, value: number): void {
    this.store(offset, 4, (b) => b.writeUInt32LE(value >>> 0, 0));
  }

  write8(offset: number, value: bigint): void {
    this.store(offset, 8, (b) => b.writeBigUInt64LE(BigInt.asUintN(64, value), 0));
  }

  release(): void {
    this.released = true;
  }
}
