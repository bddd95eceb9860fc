import { VfioPort } from '../kernel/linux/vfio.js';
import { NetbsdPciPort } from '../kernel/netbsd/pciuser.js';
import { hostPlatform, type Platform } from '../kernel/platform.js';
import type { KernelPort } from '../kernel/port.js';

const ports: Readonly<Record<Platform, () => KernelPort>> = {
  linux: () => new VfioPort(),
  netbsd: () => new NetbsdPciPort(),
};

let shared: KernelPort | undefined;

/** The kernel port of the OS we run on; one per process, since VFIO containers are per process. */
export function defaultKernelPort(): KernelPort {
  return (shared ??= ports[hostPlatform()]());
}
