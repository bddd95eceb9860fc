import { VfioPort } from '../kernel/linux/vfio.js';
import { NetbsdPciPort } from '../kernel/netbsd/pciuser.js';
import { hostPlatform, type Platform } from '../kernel/platform.js';
import { UpciError } from '../kernel/errors.js';
import type { DeviceHandles, KernelPort } from '../kernel/port.js';

const ports: Readonly<Record<Platform, () => KernelPort>> = {
  linux: () => new VfioPort(),
  netbsd: () => new NetbsdPciPort(),
};

let shared: KernelPort | undefined;

/** The kernel port of the OS we run on; one per process, since VFIO containers are per process. */
export function defaultKernelPort(): KernelPort {
  return (shared ??= ports[hostPlatform()]());
}

/**
 * The port that takes up `handles` in this thread (PciDevice.adopt): the one
 * their portModule exports, else this OS's own. A port that cannot adopt, or
 * is not the port that shared them, is refused.
 */
export async function adoptingPort(handles: DeviceHandles): Promise<KernelPort> {
  const port = handles.portModule === undefined ? defaultKernelPort() : (await import(handles.portModule) as { default?: KernelPort }).default;
  if (port?.adopt === undefined || port.name !== handles.port) {
    throw new UpciError('KERNEL', `${handles.address}: no kernel port here adopts the ${handles.port} port's handles (${handles.portModule ?? 'the default port'} gives ${port?.name ?? 'none'})`, 'share the device from a port that can adopt it in another thread (KernelPort.adopt)');
  }
  return port;
}
