/**
 * A fake device a driver thread can take up: test/support/fake-device.ts's
 * checks, with the device's state in a file (an unlinked temporary file
 * whose fd is the device's one "kernel handle") instead of this thread's
 * memory, so that every thread of the process reaches the same device as
 * it reaches a VFIO device, through fd numbers (DeviceHandles):
 *  - config space is the file's first bytes, mapped shared in each thread
 *    that opens or adopts the device: a bus master bit the main thread
 *    clears is clear for the driver thread too;
 *  - the IOMMU's mappings are a table in the file, so the main thread's
 *    DmaWindow.unmap removes what the driver thread mapped, and
 *    availableMappings() counts them all (like dma_entry_limit);
 *  - enableIrqs makes one eventfd per vector (owned by the receiver, 'hub',
 *    as VFIO's are) and sets the capability's enable bit as the kernel
 *    does; disableIrqs clears it. The fds it made are listed in the file
 *    (`irqFds`), so a test can check they were closed.
 * A worker imports this module (DeviceHandles.portModule) and adopts the
 * device with its default export.
 */
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SyscallError } from '../../kernel/errors.js';
import * as libc from '../../kernel/libc.js';
import { ManagedIommuDomain, type IommuDmaDomain } from '../../kernel/linux/iommu-dma.js';
import type { BusRange, DeviceFile, DeviceHandles, IrqKind, IrqSource, KernelPort } from '../../kernel/port.js';
import { mapShared } from '../../shm/mapping.js';
import { fakeDevice, messageControlAt, type FakeIrqCounts } from './fake-device.js';

const NAME = 'shared-fake';
const CONFIG_BYTES = 256;
/** Where enableIrqs lists the eventfds it made: Int32 slots, -1 free. */
const IRQ_FDS_AT = 2048;
const IRQ_FD_SLOTS = 64;
/** The IOMMU's mapping table: [iova, size] pairs as BigInt64, iova 0 a free slot (IOVA 0 is never handed out). */
const TABLE_AT = 4096;
const TABLE_SLOTS = 256;
const FILE_BYTES = TABLE_AT + TABLE_SLOTS * 16;
const EINVAL = 22;
/** Message Control's enable bit: MSI Enable, MSI-X Enable. */
const ENABLE = { msi: 0x0001, msix: 0x8000 } as const;

export interface SharedFakeSpec {
  readonly vendor: number;
  readonly device: number;
  readonly irqs: FakeIrqCounts;
}

/** The device's state as one thread sees it: views of the file's shared pages. */
export class SharedFakeState {
  readonly config: Buffer;
  readonly irqFds: Int32Array;
  private readonly table: BigInt64Array;

  constructor(readonly fd: number) {
    const memory = mapShared({ fd, fileOffset: 0, size: FILE_BYTES, writable: true });
    this.config = Buffer.from(memory, 0, CONFIG_BYTES);
    this.irqFds = new Int32Array(memory, IRQ_FDS_AT, IRQ_FD_SLOTS);
    this.table = new BigInt64Array(memory, TABLE_AT, TABLE_SLOTS * 2);
  }

  /** IOMMU mappings in place, whichever thread made them. */
  get mappings(): number {
    let n = 0;
    for (let i = 0; i < TABLE_SLOTS; i++) if (Atomics.load(this.table, 2 * i) !== 0n) n++;
    return n;
  }

  /** The IOMMU over the shared table: accepts every mapping, as many as it has slots. */
  iommu(): IommuDmaDomain {
    const table = this.table;
    return {
      iovaRanges: [{ start: 0n, end: (1n << 39n) - 1n }],
      pageSizes: 0x1000n,
      availableMappings: () => TABLE_SLOTS - this.mappings,
      map: (_vaddr, iova, size) => {
        for (let i = 0; i < TABLE_SLOTS; i++) {
          if (Atomics.compareExchange(table, 2 * i, 0n, iova) === 0n) {
            Atomics.store(table, 2 * i + 1, BigInt(size));
            return;
          }
        }
        throw new SyscallError(`VFIO_IOMMU_MAP_DMA: more than ${TABLE_SLOTS} mappings`, 28);
      },
      unmap: (iova, size) => {
        let removed = 0n;
        for (let i = 0; i < TABLE_SLOTS; i++) {
          const at = Atomics.load(table, 2 * i);
          const length = Atomics.load(table, 2 * i + 1);
          if (at === 0n || at + length <= iova || at >= iova + size) continue;
          // type1v2 refuses to cut a mapping in two.
          if (at < iova || at + length > iova + size) throw new SyscallError(`VFIO_IOMMU_UNMAP_DMA would split the mapping at 0x${at.toString(16)}`, EINVAL);
          if (Atomics.compareExchange(table, 2 * i, at, 0n) === at) removed += length;
        }
        return removed;
      },
    };
  }

  /** The enable bit of the MSI or MSI-X capability, as the kernel sets it on VFIO_DEVICE_SET_IRQS. */
  setEnabled(kind: IrqKind, on: boolean): void {
    const at = kind === 'intx' ? undefined : messageControlAt(this.config, kind);
    if (at === undefined) return;
    const bit = ENABLE[kind as 'msi' | 'msix'];
    const control = this.config.readUInt16LE(at);
    this.config.writeUInt16LE(on ? control | bit : control & ~bit, at);
  }

  /** Whether the MSI or MSI-X enable bit is set, read from the shared config space. */
  enabled(kind: 'msi' | 'msix'): boolean {
    const at = messageControlAt(this.config, kind);
    return at !== undefined && (this.config.readUInt16LE(at) & ENABLE[kind]) !== 0;
  }

  /** Eventfds enableIrqs made (in any thread), listed until the test looks. */
  listIrqFd(fd: number): void {
    for (let i = 0; i < IRQ_FD_SLOTS; i++) if (Atomics.compareExchange(this.irqFds, i, -1, fd) === -1) return;
    throw new Error(`shared fake: more than ${IRQ_FD_SLOTS} interrupt fds`);
  }

  madeIrqFds(): number[] {
    return [...this.irqFds].filter((fd) => fd >= 0);
  }
}

/** A DeviceFile over the shared state: the opener's closes the fd, an adopter's closes nothing. */
function sharedFile(address: string, state: SharedFakeState, irqs: FakeIrqCounts, dmaWindow: readonly BusRange[] | undefined, adopted: boolean): DeviceFile {
  const handles: DeviceHandles = { port: NAME, address: address as DeviceHandles['address'], fds: { state: state.fd }, portModule: import.meta.url };
  return fakeDevice(address, irqs, {
    dma: new ManagedIommuDomain(state.iommu(), dmaWindow),
    handles,
    enableIrqs: (kind, count): IrqSource[] => {
      const sources = Array.from({ length: count }, (_, vector): IrqSource => {
        const fd = libc.eventfd(libc.EFD_NONBLOCK);
        state.listIrqFd(fd);
        return { fd, format: 'counter', firstVector: vector, vectors: 1, owner: 'hub' };
      });
      state.setEnabled(kind, true);
      return sources;
    },
    disableIrqs: (kind) => state.setEnabled(kind, false),
    close: () => {
      if (!adopted) closeSync(state.fd);
    },
  }, state.config).file;
}

/** The port a test opens its shared fakes through; one state file per address. */
export function sharedFakePort(devices: Readonly<Record<string, SharedFakeSpec>>): KernelPort & { readonly states: Map<string, SharedFakeState> } {
  const states = new Map<string, SharedFakeState>();
  return {
    name: NAME,
    states,
    open: (address) => {
      const spec = devices[address];
      if (spec === undefined) throw new SyscallError(`open ${address}: no such shared fake`, 2);
      const dir = mkdtempSync(join(tmpdir(), 'upci-fake-'));
      const fd = openSync(join(dir, 'device'), 'w+');
      // Only the fd names the device from here on, as a VFIO device fd does.
      rmSync(dir, { recursive: true });
      ftruncateSync(fd, FILE_BYTES);
      const state = new SharedFakeState(fd);
      state.irqFds.fill(-1);
      state.config.writeUInt16LE(spec.vendor, 0);
      state.config.writeUInt16LE(spec.device, 2);
      states.set(address, state);
      return sharedFile(address, state, spec.irqs, undefined, false);
    },
    adopt,
  };
}

function adopt(handles: DeviceHandles): DeviceFile {
  const fd = handles.fds.state;
  if (handles.port !== NAME || fd === undefined) throw new SyscallError(`adopt: not the handles of a shared fake (${handles.port})`, EINVAL);
  // The interrupt hardware is already in the shared config space: nothing to write again.
  return sharedFile(handles.address, new SharedFakeState(fd), {}, handles.dmaWindow, true);
}

/** What a driver thread imports (DeviceHandles.portModule): adopts shared fakes, opens none. */
const adopting: KernelPort = {
  name: NAME,
  open: (address) => {
    throw new SyscallError(`open ${address}: a driver thread adopts shared fakes, it opens none`, EINVAL);
  },
  adopt,
};
export default adopting;
