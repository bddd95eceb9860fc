/**
 * `upci run <config> [--duration S]`: claims the config's devices, runs
 * their drivers until SIGINT/SIGTERM (or S seconds), then releases every
 * device. A second signal forces the release: every device is closed at
 * once (bus mastering off first) and the process exits.
 *
 * Exit status: 0 when every device was released cleanly, 1 when a release
 * failed or the graceful stop overran shutdownTimeoutMs and was forced,
 * 2 for a usage error; after a second SIGINT/SIGTERM the process dies of
 * that signal (shells show 130/143) once every device is closed.
 *
 * While it runs, the host watches the PCI devices appear and go (Linux: the
 * kernel's uevents) and claims those its config's entries want; SIGHUP
 * reads the config file again and applies it (DriverHost.reconfigure):
 * refused, it prints one line and the running set stays as it was.
 *
 * Bound: the graceful part is bounded by the config's shutdownTimeoutMs
 * (default 5 s), after which every device is closed directly. Measured in
 * the TCG guest under full interrupt load (test/vm/host.test.ts, which
 * asserts < 5 s): three devices released in 0.28 s, process exit 0.64 s
 * after SIGINT.
 */
import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import { builtinDrivers } from '../drivers/index.js';
import { loadHostConfig } from '../actors/config.js';
import { withConfigDrivers } from '../actors/driver-modules.js';
import { DriverHost } from '../actors/host.js';
import { EventSocket } from '../actors/event-socket.js';
import type { HostEvent } from '../actors/events.js';
import { Subject } from 'rxjs';
import { UpciError } from '../kernel/errors.js';
import { hostPlatform } from '../kernel/platform.js';
import { LinuxDeviceWatcher, type DeviceWatcher } from '../pci/device-watcher.js';
import { showStatus } from './status-view.js';

export const RUN_USAGE = '  run <config> [--duration S] [--watch] [--events PATH [--events-mode MODE]]\n'
  + '                                          run the drivers of a JSON config until SIGINT/SIGTERM or S seconds;\n'
  + '                                          --watch restarts a driver (in a new thread, device kept) when its module file changes;\n'
  + '                                          --events serves the host\'s events on a unix socket for `upci status` (mode default 0600)';

interface RunArgs {
  readonly config: string;
  readonly durationS: number | undefined;
  readonly watch: boolean;
  readonly events: string | undefined;
  readonly eventsMode: string | undefined;
}

function parseArgs(args: readonly string[]): RunArgs | string {
  let config: string | undefined;
  let durationS: number | undefined;
  let watch = false;
  let events: string | undefined;
  let eventsMode: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--watch') watch = true;
    else if (arg === '--events' || arg === '--events-mode') {
      const value = args[++i];
      if (value === undefined || value.startsWith('-')) return `${arg} expects ${arg === '--events' ? 'a socket path' : 'an octal mode such as 0660'}`;
      if (arg === '--events') events = value;
      else eventsMode = value;
    }
    else if (arg === '--duration') {
      const value = Number(args[++i]);
      if (!(value > 0)) return `--duration expects a positive number of seconds, got ${JSON.stringify(args[i] ?? '')}`;
      durationS = value;
    } else if (config === undefined && !arg.startsWith('-')) config = arg;
    else return `unexpected argument ${JSON.stringify(arg)}`;
  }
  if (eventsMode !== undefined && events === undefined) return '--events-mode needs --events PATH';
  return config === undefined ? 'expects a config file' : { config, durationS, watch, events, eventsMode };
}

/** How long a module file must stay unchanged before its drivers restart (editors write in several steps). */
const WATCH_SETTLE_MS = 200;

/** `--watch`: each driver module file watched; a change restarts the drivers of that file only. */
function watchDrivers(host: DriverHost): FSWatcher[] {
  return [...host.driverModules()].map(([file, addresses]) => {
    let timer: NodeJS.Timeout | undefined;
    // The folder, not the file: an editor's rename-over-the-file would end a watch on the file itself.
    return watch(dirname(file), (_event, name) => {
      if (name !== basename(file)) return;
      clearTimeout(timer);
      timer = setTimeout(() => {
        for (const address of addresses) host.reload(address);
      }, WATCH_SETTLE_MS);
    });
  });
}

/**
 * The event socket (`--events PATH`) is listened on before any device is claimed: a path it cannot listen on (a
 * directory that does not exist or cannot be written, a file there that is not a socket) is one error naming the
 * path and the fix, and no device was ever opened, so none is left claimed or with bus mastering on.
 */
export async function claimWithEvents(
  claim: () => DriverHost, events: string | undefined, mode: string | undefined,
): Promise<{ host: DriverHost; eventSocket: EventSocket | undefined }> {
  const stream = new Subject<HostEvent>();
  const eventSocket = events === undefined ? undefined : await EventSocket.listen(stream, events, mode);
  let host: DriverHost;
  try {
    host = claim();
  } catch (e) {
    await eventSocket?.close();
    throw e;
  }
  host.events.subscribe(stream);
  return { host, eventSocket };
}

/**
 * The PCI devices' watcher (Linux: sysfs and the kernel's uevents). Without one (another OS, or no uevent socket),
 * the host runs the devices its address entries name, and a reload still applies to those.
 */
function openWatcher(): DeviceWatcher | undefined {
  if (hostPlatform() !== 'linux') return undefined;
  try {
    return LinuxDeviceWatcher.open();
  } catch (e) {
    console.error(`upci run: not watching for PCI devices (match entries claim nothing; address entries run as given): ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`);
    return undefined;
  }
}

/** Runs the host; resolves with the exit status. Config errors are thrown (UpciError). */
export async function runCommand(args: readonly string[]): Promise<number> {
  const parsed = parseArgs(args);
  if (typeof parsed === 'string') {
    console.error(`upci run: ${parsed}\nusage:\n${RUN_USAGE}`);
    return 2;
  }
  const load = async () => loadHostConfig(parsed.config, await withConfigDrivers(parsed.config, builtinDrivers));
  const config = await load();
  const watcher = openWatcher();
  let claimed: { host: DriverHost; eventSocket: EventSocket | undefined };
  try {
    claimed = await claimWithEvents(() => DriverHost.claim(config, watcher === undefined ? {} : { watcher }), parsed.events, parsed.eventsMode);
  } catch (e) {
    watcher?.close();
    throw e;
  }
  const { host, eventSocket } = claimed;
  showStatus(host.events, process.stdout);
  let stop!: () => void;
  const stopRequested = new Promise<void>((resolve) => (stop = resolve));
  let signalled = false;
  const onSignal = (signal: 'SIGINT' | 'SIGTERM') => {
    if (!signalled) {
      signalled = true;
      stop();
      return;
    }
    host.forceRelease(`second ${signal}`);
    // Die of the signal itself: process.exit() would wait for the interrupt worker, which may be blocked in the kernel.
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  };
  // SIGHUP: the config file again. A refusal is one line; the host's event stream says it too ('reload-refused').
  let reloading = Promise.resolve();
  process.on('SIGHUP', () => {
    reloading = reloading.then(async () => {
      try {
        await host.reconfigure(load);
      } catch (e) {
        if (!(e instanceof UpciError)) throw e;
        console.error(`upci run: reload refused, nothing changed: ${e.message.split('\n')[0]}`);
      }
    });
  });
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  const duration = parsed.durationS === undefined ? undefined : setTimeout(stop, parsed.durationS * 1000);
  host.start();
  const watchers = parsed.watch ? watchDrivers(host) : [];
  // Every device may also end on its own (drivers finished, or given up).
  void host.settled.then(stop);
  await stopRequested;
  clearTimeout(duration);
  for (const w of watchers) w.close();
  const report = await host.shutdown();
  await eventSocket?.close();
  return !report.forced && report.devices.every((d) => d.released.error === undefined) ? 0 : 1;
}
