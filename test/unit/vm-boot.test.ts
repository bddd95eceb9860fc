/** The bench's one retry of a boot: only a guest kernel that panicked before init said it was ready (vm/bench.ts). */
import test from 'ava';
import { panickedBeforeReady } from '../../vm/bench.js';

const PANIC = '[    2.085254] Kernel panic - not syncing: Fatal exception in interrupt\n';
const READY = 'upci-vm: ready at 9.72s: 0000:00:04.0=vfio-pci/g1\n';

test('a panic before ready is retried; a panic after ready, a timeout or a reported status is not', (t) => {
  t.true(panickedBeforeReady({ exitCode: null, timedOut: false, console: PANIC }));
  t.false(panickedBeforeReady({ exitCode: null, timedOut: false, console: READY + PANIC }), 'the job had started: its panic is a result');
  t.false(panickedBeforeReady({ exitCode: null, timedOut: true, console: PANIC }), 'a timeout is a timeout');
  t.false(panickedBeforeReady({ exitCode: 1, timedOut: false, console: PANIC }), 'the guest reported a status');
  t.false(panickedBeforeReady({ exitCode: null, timedOut: false, console: 'no panic here\n' }));
});
