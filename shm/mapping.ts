/**
 * Shared memory as SharedArrayBuffers: device regions (BARs) and anonymous
 * DMA memory. A SharedArrayBuffer posted to a worker is the same memory, not a
 * copy, which is what lets interrupt workers and drivers see one BAR.
 */
import { freemem } from 'node:os';
import { UpciError } from '../kernel/errors.js';
import { loadNativeAddon } from '../kernel/native-addon.js';
import type { MmapSource } from '../kernel/port.js';

interface SharedMappingAddon {
  mapFile(fd: number, offset: number, length: number, writable: boolean): SharedArrayBuffer;
  allocAnonymous(length: number): SharedArrayBuffer;
  revoke(buffer: SharedArrayBuffer): void;
  address(buffer: SharedArrayBuffer): bigint;
}

const addon = loadNativeAddon<SharedMappingAddon>('upci_shm', 'shared-memory');

export const PAGE_SIZE = 4096;

export function mapShared(source: MmapSource): SharedArrayBuffer {
  return addon.mapFile(source.fd, source.fileOffset, source.size, source.writable);
}

/** Zeroed, page-aligned, populated memory, `length` rounded up to whole pages. */
export function allocShared(length: number): SharedArrayBuffer {
  const size = Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
  try {
    return addon.allocAnonymous(size);
  } catch (e) {
    if ((e as { errno?: number }).errno !== ENOMEM) throw e;
    throw new UpciError(
      'NO_MEMORY',
      `cannot allocate ${size} bytes of shared memory for DMA: the kernel refused it (ENOMEM)`,
      `allocate less, in smaller pieces (this machine has ${freemem()} bytes free), or free memory first`,
      { cause: e },
    );
  }
}

const ENOMEM = 12;

/**
 * Cuts a mapping off from what it mapped: every view of it, in any thread,
 * then reads all-ones and writes into private memory. A BAR view that outlives
 * its device must never fault (SIGBUS kills the whole process).
 */
export function revoke(buffer: SharedArrayBuffer): void {
  addon.revoke(buffer);
}

export function addressOf(buffer: SharedArrayBuffer): bigint {
  return addon.address(buffer);
}
