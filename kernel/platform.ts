/**
 * The OS this process runs on, as upci knows it: decided here once, for the
 * kernel port (pci/kernel-port.ts) and the calls on the fds it hands out
 * (kernel/fd-calls.ts), so the two cannot disagree.
 */
import { UpciError } from './errors.js';

/** 'linux': VFIO and epoll; 'netbsd': pciuser(4) and kqueue. */
export type Platform = 'linux' | 'netbsd';

const known: Readonly<Record<string, Platform>> = { linux: 'linux', netbsd: 'netbsd' };

/** The platform of this process; any other OS is refused. */
export function hostPlatform(): Platform {
  const os = known[process.platform];
  if (os === undefined) {
    throw new UpciError(
      'NO_VFIO',
      `upci runs on Linux (VFIO, epoll) and NetBSD (pciuser(4), kqueue), not on ${process.platform}`,
      'run on Linux with VFIO, or on NetBSD with the pciuser(4) patch in kernel/netbsd',
    );
  }
  return os;
}
