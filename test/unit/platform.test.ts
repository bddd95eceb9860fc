/**
 * The OS is decided once (kernel/platform.ts): the kernel port and the
 * interrupt worker's event queue follow that one decision, and refuse an OS
 * upci does not know with the same error. process.platform is replaced for
 * the test; no system call is made (the queues are handles on fd -1). Serial
 * and in this order: defaultKernelPort() keeps the first port it makes.
 */
import test from 'ava';
import { UpciError } from '../../kernel/errors.js';
import { NetbsdPciPort } from '../../kernel/netbsd/pciuser.js';
import { hostPlatform } from '../../kernel/platform.js';
import { defaultKernelPort } from '../../pci/kernel-port.js';
import { eventQueue } from '../../workers/event-queue.js';

const real = Object.getOwnPropertyDescriptor(process, 'platform')!;

function as<T>(platform: string, f: () => T): T {
  Object.defineProperty(process, 'platform', { ...real, value: platform });
  try {
    return f();
  } finally {
    Object.defineProperty(process, 'platform', real);
  }
}

test.serial('an unknown OS is refused by the kernel port and the event queue alike, naming it', (t) => {
  const expected = { instanceOf: UpciError, code: 'NO_VFIO', message: /upci runs on Linux \(VFIO, epoll\) and NetBSD \(pciuser\(4\), kqueue\), not on darwin/ } as const;
  as('darwin', () => {
    t.throws(() => hostPlatform(), expected);
    t.throws(() => defaultKernelPort(), expected);
    t.throws(() => eventQueue(-1), expected);
  });
});

test.serial('on NetBSD both choose the NetBSD side: pciuser(4) and kqueue; on Linux epoll', (t) => {
  as('netbsd', () => {
    t.is(hostPlatform(), 'netbsd');
    t.true(defaultKernelPort() instanceof NetbsdPciPort);
    t.is(eventQueue(-1).constructor.name, 'Kqueue');
  });
  as('linux', () => {
    t.is(hostPlatform(), 'linux');
    t.is(eventQueue(-1).constructor.name, 'Epoll');
  });
});
