/**
 * The kernel's uevents for PCI functions, from a netlink socket
 * (NETLINK_KOBJECT_UEVENT, the kernel's multicast group). Linux announces
 * every function that appears (`add`), goes (`remove`) or gets or loses a
 * driver (`bind`, `unbind`) there, as it happens: the event source sysfs
 * itself lacks (inotify sees no kernel-made sysfs entries). A uevent is
 * only a hint of which function to look at again: what a function is comes
 * from sysfs, so a datagram from anyone but the kernel, or a lost one
 * (ENOBUFS: the whole bus is looked at again), misleads nobody.
 */
import { SyscallError } from '../errors.js';
import { close, receiveNetlink, ueventSocket } from '../libc.js';
import { parsePciAddress, type PciAddress } from '../pci-address.js';

export interface PciUevent {
  readonly action: string;
  readonly address: PciAddress;
}

const ENOBUFS = 105;

/**
 * The PCI function a uevent datagram is about (`ACTION@DEVPATH\0KEY=VALUE\0...`),
 * or undefined for any other subsystem or a datagram that is not a kernel uevent.
 */
export function parsePciUevent(datagram: Buffer): PciUevent | undefined {
  const fields = datagram.toString('latin1').split('\0');
  if (!/^[a-z]+@\//.test(fields[0] ?? '')) return undefined;
  const values = new Map<string, string>();
  for (const field of fields.slice(1)) {
    const eq = field.indexOf('=');
    if (eq > 0) values.set(field.slice(0, eq), field.slice(eq + 1));
  }
  const action = values.get('ACTION');
  const slotName = values.get('PCI_SLOT_NAME');
  if (values.get('SUBSYSTEM') !== 'pci' || action === undefined || slotName === undefined) return undefined;
  try {
    return { action, address: parsePciAddress(slotName) };
  } catch {
    return undefined;
  }
}

export class UeventSocket {
  private readonly buf = Buffer.alloc(64 * 1024);
  private closed = false;

  private constructor(readonly fd: number) {}

  static open(): UeventSocket {
    return new UeventSocket(ueventSocket());
  }

  /**
   * Every PCI uevent waiting, in order; 'overflow' when the kernel dropped
   * some (the socket's buffer was full): then nothing of what was missed is
   * known, and the caller looks at every function again.
   */
  drain(): PciUevent[] | 'overflow' {
    const events: PciUevent[] = [];
    for (;;) {
      let got;
      try {
        got = receiveNetlink(this.fd, this.buf);
      } catch (e) {
        if (e instanceof SyscallError && e.errno === ENOBUFS) return 'overflow';
        throw e;
      }
      if (got === undefined) return events;
      if (got.senderPort !== 0) continue;
      const event = parsePciUevent(this.buf.subarray(0, got.length));
      if (event !== undefined) events.push(event);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    close(this.fd);
  }
}
