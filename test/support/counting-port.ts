/**
 * A kernel port that counts the DMA mapping calls its devices make, in
 * every thread that uses them: DmaDomain.map and allocate (each one
 * VFIO_IOMMU_MAP_DMA under VFIO) and unmap (VFIO_IOMMU_UNMAP_DMA). The
 * counts are words of a shared file whose fd rides in the device's handles;
 * a driver thread that adopts the device imports this module
 * (DeviceHandles.portModule) and counts into the same words. Everything
 * else goes to the inner port (VFIO in the VM) unchanged.
 */
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SyscallError } from '../../kernel/errors.js';
import type { DeviceFile, DeviceHandles, DmaDomain, KernelPort } from '../../kernel/port.js';
import { defaultKernelPort } from '../../pci/kernel-port.js';
import { mapShared } from '../../shm/mapping.js';

const COUNTS_BYTES = 4096;
const MAP = 0;
const UNMAP = 1;
const EINVAL = 22;

/** The counts, as every thread sees them. */
export interface DmaCalls {
  readonly map: number;
  readonly unmap: number;
}

function countsOf(fd: number): Int32Array {
  return new Int32Array(mapShared({ fd, fileOffset: 0, size: COUNTS_BYTES, writable: true }), 0, 2);
}

/** `domain` with its mapping calls counted into `counts`. */
function counted(domain: DmaDomain, counts: Int32Array): DmaDomain {
  return new Proxy(domain, {
    get(target, name) {
      const value: unknown = Reflect.get(target, name, target);
      if (typeof value !== 'function') return value;
      const method = value as (...args: unknown[]) => unknown;
      const slot = name === 'map' || name === 'allocate' ? MAP : name === 'unmap' ? UNMAP : -1;
      if (slot < 0) return method.bind(target);
      return (...args: unknown[]) => {
        Atomics.add(counts, slot, 1);
        return method.apply(target, args);
      };
    },
  });
}

/** `file` with a counted DMA domain and handles that bring a driver thread here; `closeCounts` closes the counts' fd with the file. */
function countedFile(file: DeviceFile, fd: number, closeCounts: boolean): DeviceFile {
  const counts = countsOf(fd);
  const dma = counted(file.dma, counts);
  const handles: DeviceHandles | undefined = file.handles === undefined ? undefined : { ...file.handles, fds: { ...file.handles.fds, counts: fd }, portModule: import.meta.url };
  return new Proxy(file, {
    get(target, name) {
      if (name === 'dma') return dma;
      if (name === 'handles') return handles;
      if (name === 'close' && closeCounts) {
        return () => {
          try {
            target.close();
          } finally {
            closeSync(fd);
          }
        };
      }
      const value: unknown = Reflect.get(target, name, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/** A port over `inner` whose devices count their DMA mapping calls; `calls(address)` reads them. */
export function countingPort(inner: KernelPort = defaultKernelPort()): KernelPort & { calls(address: string): DmaCalls } {
  const counts = new Map<string, Int32Array>();
  return {
    name: inner.name,
    open: (address) => {
      const dir = mkdtempSync(join(tmpdir(), 'upci-counts-'));
      const fd = openSync(join(dir, 'counts'), 'w+');
      rmSync(dir, { recursive: true });
      ftruncateSync(fd, COUNTS_BYTES);
      counts.set(address, countsOf(fd));
      try {
        return countedFile(inner.open(address), fd, true);
      } catch (e) {
        closeSync(fd);
        throw e;
      }
    },
    calls: (address) => {
      const c = counts.get(address);
      if (c === undefined) throw new Error(`counting port: ${address} was never opened`);
      return { map: Atomics.load(c, MAP), unmap: Atomics.load(c, UNMAP) };
    },
  };
}

/** What a driver thread imports (DeviceHandles.portModule): adopts through this OS's own port, counting. */
const adopting: KernelPort = {
  // The handles' port: adoptingPort() takes a module's port only under the name of the port that shared them.
  get name() {
    return defaultKernelPort().name;
  },
  open: (address) => {
    throw new SyscallError(`open ${address}: a driver thread adopts counted devices, it opens none`, EINVAL);
  },
  adopt: (handles) => {
    const fd = handles.fds.counts;
    if (fd === undefined) throw new SyscallError(`adopt: not the handles of a counted device (${handles.port})`, EINVAL);
    const { portModule: _ours, ...inner } = handles;
    const port = defaultKernelPort();
    return countedFile(port.adopt!(inner), fd, false);
  },
};
export default adopting;
