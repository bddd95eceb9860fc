/** A DriverHost started from a config for one VM test: its events logged and recorded, shut down at teardown. */
import { parseHostConfig } from '../../actors/config.js';
import type { HostEvent } from '../../actors/events.js';
import { DriverHost, type HostOptions } from '../../actors/host.js';
import { builtinDrivers } from '../../drivers/index.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface Run {
  host: DriverHost;
  events: HostEvent[];
  /** Resolves once `predicate` holds for the events so far; throws naming `what` after `ms` (default 120 s). */
  until(what: string, predicate: (events: HostEvent[]) => boolean, ms?: number): Promise<void>;
}

export interface RunOptions extends HostOptions {
  /** Sees each event in its own turn (before anything that follows it has run). */
  readonly onEvent?: (e: HostEvent) => void;
}

/** `options` as DriverHost.claim takes them (e.g. `open` over a recording kernel port), and `onEvent`. */
export function run(t: { teardown(fn: () => unknown): void; log(...v: unknown[]): void }, config: unknown, options: RunOptions = {}): Run {
  const { onEvent, ...hostOptions } = options;
  const host = DriverHost.claim(parseHostConfig(config, builtinDrivers), hostOptions);
  const events: HostEvent[] = [];
  const started = Date.now();
  host.events.subscribe((e) => {
    events.push(e);
    onEvent?.(e);
    if (e.type !== 'stats') t.log(`+${e.at - started} ms ${e.type} ${'address' in e ? e.address : ''} ${JSON.stringify({ ...e, type: undefined, at: undefined, address: undefined })}`);
  });
  t.teardown(() => host.shutdown());
  host.start();
  return {
    host,
    events,
    until: async (what, predicate, ms = 120_000) => {
      const deadline = Date.now() + ms;
      while (!predicate(events)) {
        if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await sleep(20);
      }
    },
  };
}
