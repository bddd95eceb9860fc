/**
 * Shared memory as SharedArrayBuffers: device regions (BARs) and anonymous
 * DMA memory. A SharedArrayBuffer posted to a worker is the same memory, not a
 * copy, which is what lets interrupt workers and drivers see one BAR.
 */
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
  return addon.allocAnonymous(Math.ceil(length / PAGE_SIZE) * PAGE_SIZE);
}

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
