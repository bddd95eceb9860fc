/**
 * `upci status <socket> [--follow]`: what a running host holds, read from the event socket `upci run --events
 * <socket>` serves (actors/event-socket.ts): the latest state, fault, rates and exports of each device, one line
 * each as `upci run` prints them; with --follow, then every event as it happens, until the host stops.
 */
import { createConnection } from 'node:net';
import { createInterface } from 'node:readline';
import type { HostEvent } from '../actors/events.js';
import { UpciError } from '../kernel/errors.js';
import { plainLine } from './status-view.js';

export const STATUS_USAGE = '  status <socket> [--follow]              what a running `upci run --events <socket>` holds (state, faults, rates, exports per device);\n'
  + '                                          --follow: then every event as it happens';

/** A line longer than this is not the host's: the stream is not trusted past it. */
const MAX_LINE = 16 << 20;

function parseArgs(args: readonly string[]): { socket: string; follow: boolean } | string {
  let socket: string | undefined;
  let follow = false;
  for (const arg of args) {
    if (arg === '--follow') follow = true;
    else if (socket === undefined && !arg.startsWith('-')) socket = arg;
    else return `unexpected argument ${JSON.stringify(arg)}`;
  }
  return socket === undefined ? 'expects the event socket\'s path (upci run --events PATH)' : { socket, follow };
}

/** Prints the host's state (and with --follow its events) to `out`; resolves with the exit status. */
export async function statusCommand(args: readonly string[], out: (line: string) => void = console.log): Promise<number> {
  const parsed = parseArgs(args);
  if (typeof parsed === 'string') {
    console.error(`upci status: ${parsed}\nusage:\n${STATUS_USAGE}`);
    return 2;
  }
  const { socket: path, follow } = parsed;
  const socket = createConnection(path);
  const lines = createInterface({ input: socket, crlfDelay: Infinity });
  // readline re-emits the socket's errors; they are handled on the socket below.
  lines.on('error', () => {});
  return new Promise<number>((resolve, reject) => {
    let snapshot = false;
    socket.on('error', (e: NodeJS.ErrnoException) => {
      lines.close();
      if (e.code === 'EACCES') reject(new UpciError('PERMISSION', `cannot connect to ${path}: permission denied`, 'run as the user `upci run` runs as, or start it with --events-mode 0660 and join the socket\'s group'));
      else if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') reject(new UpciError('BAD_ADDRESS', `no upci run serves events at ${path} (${e.code})`, 'start it with `upci run CONFIG --events PATH`, or give the path it was started with'));
      else reject(new UpciError('KERNEL', `${path}: ${e.message}`));
    });
    // readline buffers a line until its end: a peer that never ends one must not grow this process.
    let unended = 0;
    socket.on('data', (chunk: Buffer) => {
      unended += chunk.length;
      if (unended > MAX_LINE) socket.destroy(new Error(`a line passed ${MAX_LINE} bytes: not a upci event socket`));
    });
    lines.on('line', (text) => {
      unended = 0;
      let value: { type?: unknown; events?: unknown };
      try {
        value = JSON.parse(text) as typeof value;
      } catch {
        socket.destroy();
        reject(new UpciError('BAD_ADDRESS', `${path} sent a line that is not JSON: not a upci event socket`, 'give the path `upci run --events` was started with'));
        return;
      }
      if (!snapshot) {
        snapshot = true;
        if (value.type !== 'snapshot' || !Array.isArray(value.events)) {
          socket.destroy();
          reject(new UpciError('BAD_ADDRESS', `${path} did not start with the host's snapshot: not a upci event socket`, 'give the path `upci run --events` was started with'));
          return;
        }
        for (const e of value.events as HostEvent[]) out(plainLine(e));
        if (!follow) socket.end();
        return;
      }
      out(plainLine(value as HostEvent));
    });
    // After its 'error' (a failure rejected above): the socket's own close, not readline's, which comes first.
    socket.on('close', (hadError) => {
      if (!hadError) resolve(snapshot ? 0 : 1);
    });
  });
}
