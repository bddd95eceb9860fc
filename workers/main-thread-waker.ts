/**
 * Wakes the thread that created a waker (the main thread) from any thread,
 * through its event loop's own libuv async handle (workers/native/
 * main_thread_waker.cc): of the paths from a worker to a main-thread callback
 * the interrupt benchmark compares (postMessage, Atomics.waitAsync, a pipe),
 * the shortest at the median. Wakes coalesce: the callback runs at least
 * once after each wake, and once for several that come close together.
 */
import { loadNativeAddon } from '../kernel/native-addon.js';

interface WakerAddon {
  create(callback: () => void): number;
  wake(id: number): void;
  close(id: number): void;
}

const addon = loadNativeAddon<WakerAddon>('upci_waker', 'main-thread waker');

export interface MainThreadWaker {
  /** What another thread passes to wakeMainThread(); plain data, so it can be posted. */
  readonly id: number;
  /** After this the callback never runs again, and wakes of `id` do nothing. */
  close(): void;
}

/** Runs `callback` on this thread's event loop whenever another thread wakes `id`; does not keep the process alive. */
export function createMainThreadWaker(callback: () => void): MainThreadWaker {
  const id = addon.create(callback);
  return { id, close: () => addon.close(id) };
}

/** From any thread of this process; a waker already closed is not woken. */
export function wakeMainThread(id: number): void {
  addon.wake(id);
}
