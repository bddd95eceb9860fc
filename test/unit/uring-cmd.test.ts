/**
 * kernel/native/uring_cmd.cc through kernel/linux/uring-cmd.ts, on this
 * machine's kernel: /dev/null takes io_uring passthrough commands (Linux
 * 6.0+ answers them with 0), /dev/zero has none (-EOPNOTSUPP); completions
 * wake this thread's loop through the ring's eventfd and the interrupt
 * watcher, with the caller's user data.
 */
import test from 'ava';
import { closeSync, openSync } from 'node:fs';
import { UringCmdRing } from '../../kernel/linux/uring-cmd.js';
import { watchSource } from '../../kernel/interrupt-watcher.js';

const EOPNOTSUPP = 95;

test('passthrough commands complete with their user data and result, and wake the loop through the eventfd', async (t) => {
  const ring = new UringCmdRing(4, true);
  const nul = openSync('/dev/null', 'r');
  const zero = openSync('/dev/zero', 'r');
  t.teardown(() => {
    ring.close();
    closeSync(nul);
    closeSync(zero);
  });
  const done: [number, number][] = [];
  const woken = new Promise<void>((resolve) => {
    const watch = watchSource({ fd: ring.eventFd, format: 'counter', firstVector: 0, vectors: 1, owner: 'device' }, () => {
      ring.reap((userData, res) => done.push([userData, res]));
      if (done.length === 2) {
        watch.unwatch();
        resolve();
      }
    });
  });
  t.true(ring.command(nul, 0, 2 ** 40 + 7, new Uint8Array(80)));
  t.true(ring.command(zero, 0, 9, new Uint8Array(16)));
  t.is(ring.submit(), 2);
  await woken;
  t.deepEqual(done.sort((a, b) => a[0] - b[0]), [[9, -EOPNOTSUPP], [2 ** 40 + 7, 0]]);
});

test('a full submission ring refuses the next command until submitted; a command larger than the SQE is refused', (t) => {
  const ring = new UringCmdRing(2, false);
  const nul = openSync('/dev/null', 'r');
  t.teardown(() => {
    ring.close();
    closeSync(nul);
  });
  t.true(ring.command(nul, 0, 1, new Uint8Array(16)));
  t.true(ring.command(nul, 0, 2, new Uint8Array(16)));
  t.false(ring.command(nul, 0, 3, new Uint8Array(16)), 'two slots, both taken');
  t.is(ring.submit(), 2);
  t.true(ring.command(nul, 0, 3, new Uint8Array(16)), 'room again once submitted');
  t.throws(() => ring.command(nul, 0, 4, new Uint8Array(17)), { message: /does not fit/ });
});
