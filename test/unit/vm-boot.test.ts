/**
 * The bench's answers to a guest kernel that panicked: one more boot when it panicked before init said it was
 * ready (vm/bench.ts), and the panic's trace, said in the test command's summary when a suite runs again.
 */
import test from 'ava';
import { guestPanic, panickedBeforeReady } from '../../vm/bench.js';

const PANIC = '[    2.085254] Kernel panic - not syncing: Fatal exception in interrupt\n';
const READY = 'upci-vm: ready at 9.72s: 0000:00:04.0=vfio-pci/g1\n';
/** Trimmed from CI's stop 27: a double fault in the slab allocator under a 9p lookup. */
const TRACE = `[  964.697873] traps: PANIC: double fault, error_code: 0x0
[  964.699759] Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI
[  964.700605] RIP: 0010:__kmalloc_noprof+0x123/0x3f0
[  964.705038] Call Trace:
[  964.705550]  <TASK>
[  964.706061]  ? p9_fcall_init+0x2f/0x80 [9pnet]
[  964.706394]  p9_fcall_init+0x2f/0x80 [9pnet]
[  964.706510]  p9_tag_alloc+0x9f/0x270 [9pnet]
[  964.706560]  p9_client_prepare_req+0x97/0x170 [9pnet]
[  964.706582]  p9_client_rpc+0x9d/0x3d0 [9pnet]
[  964.706612]  p9_client_walk+0x85/0x230 [9pnet]
[  964.708147] Kernel panic - not syncing: Fatal exception in interrupt
`;

test('a panic before ready is retried; a panic after ready, a timeout or a reported status is not', (t) => {
  t.true(panickedBeforeReady({ exitCode: null, timedOut: false, console: PANIC }));
  t.false(panickedBeforeReady({ exitCode: null, timedOut: false, console: READY + PANIC }), 'the job had started: its panic is a result');
  t.false(panickedBeforeReady({ exitCode: null, timedOut: true, console: PANIC }), 'a timeout is a timeout');
  t.false(panickedBeforeReady({ exitCode: 1, timedOut: false, console: PANIC }), 'the guest reported a status');
  t.false(panickedBeforeReady({ exitCode: null, timedOut: false, console: 'no panic here\n' }));
});

test('a panic is told by its first line, the faulting RIP and its first frames; none without one', (t) => {
  t.is(
    guestPanic({ exitCode: null, timedOut: false, console: READY + TRACE }),
    'Fatal exception in interrupt; double fault, error_code: 0x0; at __kmalloc_noprof+0x123/0x3f0; via p9_fcall_init+0x2f/0x80 < p9_tag_alloc+0x9f/0x270 < p9_client_prepare_req+0x97/0x170 < p9_client_rpc+0x9d/0x3d0',
  );
  t.is(guestPanic({ exitCode: null, timedOut: false, console: READY + PANIC }), 'Fatal exception in interrupt');
  t.is(guestPanic({ exitCode: 0, timedOut: false, console: READY + TRACE }), undefined, 'the guest reported a status');
  t.is(guestPanic({ exitCode: null, timedOut: true, console: TRACE }), undefined, 'a timeout is a timeout');
  t.is(guestPanic({ exitCode: null, timedOut: false, console: READY }), undefined);
});
