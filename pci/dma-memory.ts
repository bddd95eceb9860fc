/**
 * bus_dmamem: DMA memory, a SharedArrayBuffer the device reaches at one
 * bus-contiguous range from allocation until free(). Where the pages come
 * from is the kernel port's business (DmaDomain.allocate): anonymous memory
 * allocated here and mapped by the IOMMU (VFIO), or the kernel's own,
 * mmapped here (pciuser(4)).
 */
import { UpciError } from '../kernel/errors.js';
import type { DmaAccess, DmaMapping } from '../kernel/port.js';
import { addressOf, allocShared, mapShared, revoke } from '../shm/mapping.js';
import { released } from './dma-errors.js';
import { contiguousStart, type DmaOwner, type Holding } from './dma-owner.js';
import type { DmaTag } from './dma-tag.js';

export interface AllocOptions {
  /** What the device may do to the memory (IOMMU permissions). Default 'both'. */
  readonly access?: DmaAccess;
}

/** @internal bus_dma's side of live DmaMemory, out of reach of the object a driver holds. */
export interface MemoryState {
  readonly owner: DmaOwner;
  readonly mapping: DmaMapping;
  /** Bus address of the first byte. */
  readonly busAddress: bigint;
  /** Loads of this memory that are still loaded: free() is refused while there are any. */
  loads: number;
}

const states = new WeakMap<DmaMemory, MemoryState>();
const memoryOfBuffers = new WeakMap<SharedArrayBuffer, DmaMemory>();

/** @internal The state of memory not yet freed. */
export function memoryState(memory: DmaMemory): MemoryState | undefined {
  return states.get(memory);
}

/** @internal The DmaMemory whose buffer this is, if any. */
export function memoryOfBuffer(buffer: SharedArrayBuffer): DmaMemory | undefined {
  return memoryOfBuffers.get(buffer);
}

/** bus_dmamem: DMA memory, reachable by the device until free(). */
export class DmaMemory {
  #buffer: SharedArrayBuffer | undefined;
  readonly #holding: Holding;

  /** @internal use DmaTag.allocMemory */
  constructor(
    readonly tag: DmaTag,
    buffer: SharedArrayBuffer,
    readonly size: number,
    state: MemoryState,
  ) {
    this.#buffer = buffer;
    this.#holding = { mappedBytes: size, teardown: () => this.#teardown(state) };
    states.set(this, state);
    memoryOfBuffers.set(buffer, this);
    state.owner.memories.add(this.#holding);
  }

  /** The memory, shared with any worker it is posted to. Throws once freed. */
  get buffer(): SharedArrayBuffer {
    if (this.#buffer === undefined) throw released('this DMA memory has been freed');
    return this.#buffer;
  }

  get freed(): boolean {
    return this.#buffer === undefined;
  }

  /**
   * bus_dmamem_unmap + bus_dmamem_free: removes the kernel's mapping (under
   * an IOMMU its IOVA goes to quarantine), then unpins and revokes the
   * pages. Legal while the device masters the bus for other DMA; refused
   * while a map has it loaded.
   */
  free(): void {
    const state = states.get(this);
    if (state === undefined || this.#buffer === undefined) throw released('this DMA memory was already freed');
    state.owner.live();
    if (state.loads > 0) {
      throw new UpciError('BUSY', `bus_dma: cannot free DMA memory that ${state.loads} map(s) still have loaded`, 'unload those maps first');
    }
    this.#teardown(state);
  }

  #teardown(state: MemoryState): void {
    const buffer = this.#buffer;
    if (buffer === undefined) return;
    this.#buffer = undefined;
    states.delete(this);
    state.owner.memories.delete(this.#holding);
    try {
      state.owner.domain.unmap(state.mapping);
    } finally {
      // Only after the device lost the pages: views a driver kept now read all-ones.
      revoke(buffer);
    }
  }
}

/**
 * @internal bus_dmamem_alloc + map of `size` bytes (a multiple of the
 * domain's page) under `tag`, which has checked the request. The kernel's
 * answer is checked against the tag as any load is.
 */
export function allocateMemory(owner: DmaOwner, tag: DmaTag, size: number, access: DmaAccess): DmaMemory {
  const { domain } = owner;
  let anonymous: SharedArrayBuffer | undefined;
  let mapping: DmaMapping;
  try {
    mapping = domain.allocate(size, tag.constraints(BigInt(size), 1), access, (length) => {
      anonymous = allocShared(length);
      return { address: addressOf(anonymous), size: length };
    });
  } catch (e) {
    if (anonymous !== undefined) revoke(anonymous);
    throw e;
  }
  let buffer = anonymous;
  let busAddress: bigint;
  try {
    busAddress = contiguousStart(mapping, size);
    tag.segments(busAddress, size);
    if (mapping.mmap !== undefined) buffer = mapShared(mapping.mmap);
    if (buffer === undefined) throw new UpciError('KERNEL', 'bus_dma: the kernel port neither mapped the process pages it was given nor returned its own');
  } catch (e) {
    try {
      domain.unmap(mapping);
    } finally {
      if (buffer !== undefined) revoke(buffer);
    }
    throw e;
  }
  return new DmaMemory(tag, buffer, size, { owner, mapping, busAddress, loads: 0 });
}
