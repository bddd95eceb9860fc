/** Reading a DriverHost's event stream in unit tests. */
import type { HostEvent } from '../../actors/events.js';
import type { DriverHost } from '../../actors/host.js';

/** Records the host's events; a failing test still shuts the host down, so the process can exit. */
export function record(t: { teardown(fn: () => unknown): void }, host: DriverHost): HostEvent[] {
  const events: HostEvent[] = [];
  host.events.subscribe((e) => events.push(e));
  t.teardown(() => host.shutdown());
  return events;
}

/** The states the device at `address` went through, in order. */
export const states = (events: HostEvent[], address: string) => events.flatMap((e) => (e.type === 'state' && e.address === address ? [e.state] : []));
