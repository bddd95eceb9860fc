/**
 * The OS is decided once (kernel/platform.ts): the kernel port and the fd
 * calls on the interrupt sources it hands out (kernel/fd-calls.ts) follow
 * that one decision, and refuse an OS upci does not know with the same
 * error. process.platform is replaced for the test; no system call is made.
 * Serial and in this order: defaultKernelPort() keeps the first port it makes.
 */
import test from 'ava';
import { UpciError } from '../../kernel/errors.js';
import { NetbsdPciPort } from '../../kernel/netbsd/pciuser.js';
import { hostPlatform } from '../../kernel/platform.js';
import { defaultKernelPort } from '../../pci/kernel-port.js';
import { fdCalls } from '../../kernel/fd-calls.js';
import * as linux from '../../kernel/libc.js';
import * as netbsd from '../../kernel/netbsd/libc.js';

const real = Object.getOwnPropertyDescriptor(process, 'platform')!;

function as<T>(platform: string, f: () => T): T {
  Object.defineProperty(process, 'platform', { ...real, value: platform });
  try {
    return f();
  } finally {
    Object.defineProperty(process, 'platform', real);
  }
}

test.serial('an unknown OS is refused by the kernel port and the fd calls alike, naming it', (t) => {
  const expected = { instanceOf: UpciError, code: 'NO_VFIO', message: /upci runs on Linux \(VFIO, epoll\) and NetBSD \(pciuser\(4\), kqueue\), not on darwin/ } as const;
  as('darwin', () => {
    t.throws(() => hostPlatform(), expected);
    t.throws(() => defaultKernelPort(), expected);
    t.throws(() => fdCalls(), expected);
  });
});

test.serial('on NetBSD both choose the NetBSD side: pciuser(4) and its libc\'s read and close; on Linux glibc\'s', (t) => {
  as('netbsd', () => {
    t.is(hostPlatform(), 'netbsd');
    t.true(defaultKernelPort() instanceof NetbsdPciPort);
    t.is(fdCalls().read, netbsd.readSome);
    t.is(fdCalls().close, netbsd.close);
  });
  as('linux', () => {
    t.is(hostPlatform(), 'linux');
    t.is(fdCalls().read, linux.readSome);
    t.is(fdCalls().close, linux.close);
  });
  t.not(netbsd.readSome, linux.readSome, 'two libcs, two bindings');
});
