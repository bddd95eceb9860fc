/**
 * `upci run` output. On a TTY: one line per device, redrawn in place (at
 * most 10 times a second). Otherwise: one plain line per event, stats
 * included, for logs and tests.
 */
import type { Observable } from 'rxjs';
import type { HostEvent } from '../actors/events.js';
import type { ThreadStats } from '../actors/meter.js';

interface Row {
  driver: string;
  state: string;
  incarnation: number;
  interrupts: number;
  rate: number;
  dmaBytes: number;
  restarts: number;
  thread: string;
  last: string;
}

const REDRAW_MS = 100;

function bytes(n: number): string {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
}

function threadLine(t: ThreadStats): string {
  const heartbeat = t.heartbeatAgeMs === undefined ? 'none yet' : `${t.heartbeatAgeMs}ms`;
  return `thread=${t.threadId} heartbeat=${heartbeat} heap=${bytes(t.heapUsed)}/${bytes(t.heapLimit)}`;
}

/** The plain line for an event (non-TTY output). */
export function plainLine(e: HostEvent): string {
  const time = new Date(e.at).toISOString().slice(11, 23);
  switch (e.type) {
    case 'host': return `${time} host ${e.phase}${e.detail === undefined ? '' : `: ${e.detail}`}`;
    case 'state': return `${time} ${e.address} ${e.driver} ${e.state} (incarnation ${e.incarnation})`;
    case 'fault': return `${time} ${e.address} fault ${e.fault.kind}: ${e.fault.message}`;
    case 'restart': return `${time} ${e.address} restart #${e.attempt} in ${e.delayMs} ms after ${e.reset}`;
    case 'released': return `${time} ${e.address} released: ${e.outcome.kind} (${e.release.how}${e.release.error === undefined ? '' : `, error: ${e.release.error}`})`;
    case 'stats': return `${time} ${e.address} stats interrupts=${e.interrupts} rate=${e.interruptsPerSecond}/s dma=${e.dmaBytesMapped}${e.thread === undefined ? '' : ` ${threadLine(e.thread)}`}`;
    case 'thread': return `${time} ${e.address} incarnation ${e.incarnation} in thread ${e.threadId}`;
    case 'quiesced': return `${time} ${e.address} quiesced incarnation ${e.incarnation}${e.report.threadRunning ? ' (its thread still running)' : ''}: busMaster=${e.report.busMaster} vectors=${e.report.vectorsDisabled ?? 'none'} off, dmaMappingsLeft=${e.report.dmaMappingsLeft ?? '?'}`;
    case 'removed': return `${time} ${e.address} removed: the kernel asked for the device back (${e.requests} request(s)); quiesced and closed, not restarted${e.error === undefined ? '' : ` (error: ${e.error})`}`;
    case 'note': return `${time} ${e.address} note ${e.message}`;
    case 'export': return `${time} ${e.address} export ${e.kind} ${e.service} at ${e.target} ${e.phase}: ${e.detail}`;
  }
}

/** Prints `events` to `out` until the stream completes. */
export function showStatus(events: Observable<HostEvent>, out: NodeJS.WriteStream): void {
  if (!out.isTTY) {
    events.subscribe((e) => out.write(`${plainLine(e)}\n`));
    return;
  }
  const rows = new Map<string, Row>();
  /** Each export's last step, by kind and target. */
  const exports = new Map<string, string>();
  let host = '';
  let drawn = 0;
  let timer: NodeJS.Timeout | undefined;
  const draw = () => {
    timer = undefined;
    const width = out.columns ?? 120;
    const lines = [`upci host: ${host}`, ...[...rows].map(([address, r]) =>
      `${address} ${r.driver.padEnd(11)} ${r.state.padEnd(9)} #${r.incarnation} irq ${String(r.interrupts).padStart(8)} ${String(r.rate).padStart(6)}/s dma ${bytes(r.dmaBytes).padStart(9)} restarts ${r.restarts} ${r.thread} ${r.last}`),
    ...[...exports].map(([what, last]) => `export ${what} ${last}`)];
    // Cursor up over the last frame, then each line cleared and rewritten.
    out.write((drawn > 0 ? `\x1b[${drawn}A` : '') + lines.map((l) => `\x1b[2K${l.slice(0, width - 1)}\n`).join(''));
    drawn = lines.length;
  };
  const row = (address: string): Row => {
    let r = rows.get(address);
    if (r === undefined) rows.set(address, (r = { driver: '', state: '', incarnation: 0, interrupts: 0, rate: 0, dmaBytes: 0, restarts: 0, thread: '', last: '' }));
    return r;
  };
  events.subscribe({
    next: (e) => {
      if (e.type === 'host') host = e.phase + (e.detail === undefined ? '' : `: ${e.detail}`);
      else if (e.type === 'state') Object.assign(row(e.address), { driver: e.driver, state: e.state, incarnation: e.incarnation });
      else if (e.type === 'stats') {
        Object.assign(row(e.address), { interrupts: e.interrupts, rate: e.interruptsPerSecond, dmaBytes: e.dmaBytesMapped, thread: e.thread === undefined ? '' : threadLine(e.thread) });
      } else if (e.type === 'thread') row(e.address).last = `incarnation ${e.incarnation} in thread ${e.threadId}`;
      else if (e.type === 'quiesced') row(e.address).last = `quiesced incarnation ${e.incarnation}`;
      else if (e.type === 'restart') Object.assign(row(e.address), { restarts: e.attempt, last: `restart #${e.attempt} (${e.reset})` });
      else if (e.type === 'fault') row(e.address).last = `${e.fault.kind}: ${e.fault.message}`;
      else if (e.type === 'note') row(e.address).last = e.message;
      else if (e.type === 'removed') Object.assign(row(e.address), { state: 'removed', last: 'removed: the kernel asked for it back' });
      else if (e.type === 'export') exports.set(`${e.kind} ${e.service} at ${e.target}`, `${e.phase}: ${e.detail}`);
      else row(e.address).last = `released: ${e.outcome.kind}`;
      timer ??= setTimeout(draw, REDRAW_MS);
    },
    complete: () => {
      clearTimeout(timer);
      draw();
    },
  });
}
