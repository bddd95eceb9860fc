import { platform } from 'node:os';
import { UpciError } from '../kernel/errors.js';
import { VfioPort } from '../kernel/linux/vfio.js';
import type { KernelPort } from '../kernel/port.js';

let shared: KernelPort | undefined;

/** The kernel port of the OS we run on; one per process, since VFIO containers are per process. */
export function defaultKernelPort(): KernelPort {
  if (shared !== undefined) return shared;
  if (platform() === 'linux') return (shared = new VfioPort());
  throw new UpciError('NO_VFIO', `upci has no kernel port for ${platform()} yet`, 'run on Linux with VFIO (NetBSD support is in kernel/netbsd)');
}
