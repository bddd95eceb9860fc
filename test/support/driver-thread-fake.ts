/**
 * A "driver thread" on a fake device for the service layer's tests: a
 * worker running test/support/service-thread.ts, linked to the test's
 * ServiceRegistry as a driver thread is, driven by commands. takeBack() is
 * what the device actor does for a driver thread: withdrawProvided, the
 * worker terminated, the link closed.
 */
import { Worker } from 'node:worker_threads';
import type { ServiceRegistry } from '../../services/service-registry.js';
import type { ServiceCommand, ServiceThreadStats } from './service-thread.js';
import { within } from './bounded.js';

const fixture = new URL('./service-thread.js', import.meta.url);

export interface DriverThreadFake {
  call<T = unknown>(command: ServiceCommand): Promise<T>;
  stats(): Promise<ServiceThreadStats>;
  /** The host takes its device back: what it provides withdrawn, the thread terminated, its link closed. */
  takeBack(): Promise<void>;
}

export function driverThread(t: { teardown(fn: () => unknown): void }, registry: ServiceRegistry, label: string): DriverThreadFake {
  const link = registry.link(label);
  const worker = new Worker(fixture, { workerData: { services: link.port }, transferList: [link.port] });
  let next = 0;
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  worker.on('message', (m: { id: number; value?: unknown; error?: { name: string; message: string } }) => {
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (m.error === undefined) return p?.resolve(m.value);
    const error = new Error(m.error.message);
    error.name = m.error.name;
    p?.reject(error);
  });
  const reason = `the host took ${label} back from its driver`;
  const takeBack = async () => {
    link.withdrawProvided(reason);
    await worker.terminate();
    link.close(reason);
  };
  t.teardown(takeBack);
  const call = <T>(command: ServiceCommand) => within(20_000, new Promise<T>((resolve, reject) => {
    const id = next++;
    pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
    worker.postMessage({ ...command, id });
  }), `${label} never answered ${JSON.stringify(command)}`);
  return { call, stats: () => call<ServiceThreadStats>({ cmd: 'stats' }), takeBack };
}

