/**
 * A TAP interface (/dev/net/tun, IFF_TAP | IFF_NO_PI): whole Ethernet
 * frames in and out of the kernel's network stack through one descriptor,
 * opened non-blocking so it is read without a blocked thread.
 */
import { UpciError } from '../errors.js';
import { close, datagramSocket, ioctlBuffer, open, O_NONBLOCK, O_RDWR } from '../libc.js';
import { IFNAMSIZ, INTERFACE_NAME_FIX, interfaceNameProblem } from './interface-name.js';

/** _IOW('T', 202, int) */
const TUNSETIFF = 0x400454ca;
/** The TAP's own descriptor takes the interface ioctls too (drivers/net/tun.c). */
const SIOCSIFHWADDR = 0x8924;
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const IFF_UP = 0x1;
const ARPHRD_ETHER = 1;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
/** struct ifreq: the name, then a union whose first member is the flags. */
const IFREQ_SIZE = 40;

export interface Tap {
  readonly fd: number;
  readonly name: string;
  /** Sets the interface up (`ip link set NAME up`): the kernel then configures its IPv6 link-local address. */
  up(): void;
  /** Closes the descriptor: the interface, not persistent, is deleted with it. */
  close(): void;
}

/** Creates (or attaches to) TAP interface `name`; with `mac`, the interface takes that hardware address. */
export function openTap(name: string, mac?: readonly number[]): Tap {
  const problem = interfaceNameProblem(name);
  if (problem !== undefined) throw new UpciError('BAD_CONFIG', `TAP: ${problem}`, INTERFACE_NAME_FIX);
  let fd: number;
  try {
    fd = open('/dev/net/tun', O_RDWR | O_NONBLOCK);
  } catch (e) {
    throw new UpciError('NO_DEVICE', 'TAP: /dev/net/tun cannot be opened', 'load the tun module (modprobe tun) and run with CAP_NET_ADMIN', { cause: e });
  }
  const ifr = Buffer.alloc(IFREQ_SIZE);
  ifr.write(name, 0, 'utf8');
  ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI, IFNAMSIZ);
  try {
    ioctlBuffer(fd, TUNSETIFF, ifr, `TUNSETIFF ${name}`);
    if (mac !== undefined) {
      const req = Buffer.alloc(IFREQ_SIZE);
      ifr.copy(req, 0, 0, IFNAMSIZ);
      req.writeUInt16LE(ARPHRD_ETHER, IFNAMSIZ);
      Buffer.from(mac).copy(req, IFNAMSIZ + 2);
      ioctlBuffer(fd, SIOCSIFHWADDR, req, `SIOCSIFHWADDR ${name}`);
    }
  } catch (e) {
    close(fd);
    throw e;
  }
  const actual = ifr.toString('utf8', 0, IFNAMSIZ).replace(/\0.*$/s, '');
  return { fd, name: actual, up: () => setUp(actual), close: () => close(fd) };
}

function setUp(name: string): void {
  const sock = datagramSocket();
  try {
    const ifr = Buffer.alloc(IFREQ_SIZE);
    ifr.write(name, 0, 'utf8');
    ioctlBuffer(sock, SIOCGIFFLAGS, ifr, `SIOCGIFFLAGS ${name}`);
    ifr.writeUInt16LE(ifr.readUInt16LE(IFNAMSIZ) | IFF_UP, IFNAMSIZ);
    ioctlBuffer(sock, SIOCSIFFLAGS, ifr, `SIOCSIFFLAGS ${name}`);
  } finally {
    close(sock);
  }
}
