import { platform } from 'node:os';
import { UpciError } from '../kernel/errors.js';
import { VfioPort } from '../kernel/linux/vfio.js';
import { NetbsdPciPort } from '../kernel/netbsd/pciuser.js';
import type { KernelPort } from '../kernel/port.js';

let shared: KernelPort | undefined;

/** The kernel port of the OS we run on; one per process, since VFIO containers are per process. */
export function defaultKernelPort(): KernelPort {
  if (shared !== undefined) return shared;
  if (platform() === 'linux') return (shared = new VfioPort());
  if (platform() === 'netbsd') return (shared = new NetbsdPciPort());
  throw new UpciError('NO_VFIO', `upci has no kernel port for ${platform()}`, 'run on Linux with VFIO, or on NetBSD with the pciuser(4) patch in kernel/netbsd');
}
