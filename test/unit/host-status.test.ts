/** `upci run` output: a redrawn table on a TTY, plain lines otherwise. */
import test from 'ava';
import { Subject } from 'rxjs';
import { DriverLedger } from '../../workers/driver-ledger.js';
import type { HostEvent } from '../../actors/events.js';
import { plainLine, showStatus } from '../../bin/status-view.js';
import type { PciAddress } from '../../kernel/pci-address.js';

const A = '0000:00:04.0' as PciAddress;
const at = Date.UTC(2026, 0, 1, 12, 0, 0, 5);

function fakeStream(isTTY: boolean): { stream: NodeJS.WriteStream; text: () => string } {
  let text = '';
  const stream = { isTTY, columns: 200, write: (s: string) => ((text += s), true) } as unknown as NodeJS.WriteStream;
  return { stream, text: () => text };
}

test('plain lines: one per event, with the time, the device and what happened', (t) => {
  t.is(plainLine({ type: 'state', at, address: A, driver: 'edu', state: 'running', incarnation: 1 }), '12:00:00.005 0000:00:04.0 edu running (incarnation 1)');
  t.is(plainLine({ type: 'restart', at, address: A, attempt: 2, delayMs: 200, reset: 'reopen' }), '12:00:00.005 0000:00:04.0 restart #2 in 200 ms after reopen');
  t.is(plainLine({ type: 'stats', at, address: A, interrupts: 10, interruptsPerSecond: 5, dmaBytesMapped: 8192 }), '12:00:00.005 0000:00:04.0 stats interrupts=10 rate=5/s dma=8192');
});

test('a driver thread before its first heartbeat shows no heartbeat age, not the time since 1970; after it, the age', (t) => {
  const ledger = DriverLedger.create();
  t.is(ledger.heartbeatAgeMs, undefined);
  const stats = (heartbeatAgeMs: number | undefined): HostEvent => ({
    type: 'stats', at, address: A, interrupts: 0, interruptsPerSecond: 0, dmaBytesMapped: 0, thread: { threadId: 3, heartbeatAgeMs, heapUsed: 0, heapLimit: 1 << 20 },
  });
  t.is(plainLine(stats(ledger.heartbeatAgeMs)), '12:00:00.005 0000:00:04.0 stats interrupts=0 rate=0/s dma=0 thread=3 heartbeat=none yet heap=0 B/1.0 MiB');
  ledger.beat(0, 1 << 20, 0);
  const age = ledger.heartbeatAgeMs;
  t.true(age !== undefined && age >= 0 && age < 1000, `the age right after a beat: ${age}`);
  t.regex(plainLine(stats(age)), / heartbeat=\d+ms /);
});

test('on a TTY: one line per device, redrawn in place', async (t) => {
  const events = new Subject<HostEvent>();
  const { stream, text } = fakeStream(true);
  showStatus(events, stream);
  events.next({ type: 'host', at, phase: 'running' });
  events.next({ type: 'state', at, address: A, driver: 'edu', state: 'running', incarnation: 0 });
  events.next({ type: 'stats', at, address: A, interrupts: 1234, interruptsPerSecond: 100, dmaBytesMapped: 8192 });
  await new Promise((r) => setTimeout(r, 150));
  events.next({ type: 'fault', at, address: A, fault: { kind: 'watchdog', message: 'hung', incarnation: 0, at } });
  events.complete();
  const frames = text().split('\x1b[2A');
  t.is(frames.length, 2, 'the second frame moves up over the two lines of the first');
  t.regex(frames[0]!, /0000:00:04\.0 edu +running +#0 irq +1234 +100\/s dma +8\.0 KiB restarts 0/);
  t.regex(frames[1]!, /watchdog: hung/);
});
