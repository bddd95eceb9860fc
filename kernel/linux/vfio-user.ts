/**
 * VFIO without root. A process needs, for a device:
 *  - read-write access to its group node /dev/vfio/N (root-only, 0600, as
 *    the kernel creates it): `upci bind ADDR --user NAME` chowns it to the
 *    user until the node is made again (reboot, the group's last device
 *    unbound); `upci udev-rule ADDR --user NAME` prints the udev rule that
 *    does it at every boot;
 *  - /dev/vfio/vfio, the container node: the kernel makes it 0666;
 *  - RLIMIT_MEMLOCK covering what its drivers map for DMA (memlock.ts);
 *  - a viable group, as root does (vfio.ts says which device spoils it).
 * Only the group given is reachable: every other group node stays root's.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { UpciError } from '../errors.js';
import type { PciAddress } from '../pci-address.js';
import { currentUser } from './memlock.js';
import { bindVfio, groupMembers, type PciFunctionInfo, type SysfsRoots } from './sysfs.js';

export interface UserAccount {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

/** Looks up one passwd entry by name or uid: its line (name:x:uid:gid:...), or undefined. */
export type PasswdLookup = (nameOrUid: string) => string | undefined;

/** The system's user database (NSS through getent, /etc/passwd where getent is missing). */
export const systemPasswd: PasswdLookup = (key) => {
  try {
    return execFileSync('getent', ['passwd', key], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0];
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return undefined; // getent ran: exit 2 is "no such key"
    return passwdFile('/etc/passwd')(key);
  }
};

/** A lookup in a passwd-format file. */
export function passwdFile(path: string): PasswdLookup {
  return (key) => readFileSync(path, 'utf8').split('\n').find((line) => {
    const [name, , uid] = line.split(':');
    return name === key || (/^\d+$/.test(key) && uid === key);
  });
}

/** The account `--user` names; an unknown one is an error naming it. */
export function resolveUser(nameOrUid: string, lookup: PasswdLookup = systemPasswd): UserAccount {
  const line = /^[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?$/.test(nameOrUid) ? lookup(nameOrUid) : undefined;
  const [name, , uid, gid] = line?.split(':') ?? [];
  if (name === undefined || uid === undefined || gid === undefined || !/^\d+$/.test(uid) || !/^\d+$/.test(gid)) {
    throw new UpciError('NO_USER', `no user ${JSON.stringify(nameOrUid)} in the user database`, 'name an existing account (`getent passwd NAME` shows it; `useradd --system NAME` creates one)');
  }
  return { name, uid: Number(uid), gid: Number(gid) };
}

export function groupNode(roots: SysfsRoots, group: number): string {
  return join(roots.dev, 'vfio', String(group));
}

export interface Grant {
  readonly info: PciFunctionInfo;
  readonly group: number;
  readonly node: string;
  /** Every function of the group: the user gets them all (one group node). */
  readonly members: readonly PciFunctionInfo[];
}

/**
 * `upci bind ADDR --user NAME`: binds as `upci bind` does (which refuses a
 * group that is not viable, before anything is given), then makes the
 * group's node the user's, mode 0600.
 */
export function grantGroup(roots: SysfsRoots, address: PciAddress, user: UserAccount): Grant {
  const info = bindVfio(roots, address);
  const group = info.iommuGroup!;
  const node = groupNode(roots, group);
  try {
    chownSync(node, user.uid, user.gid);
    chmodSync(node, 0o600);
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (code === 'EPERM' || code === 'EACCES') throw new UpciError('PERMISSION', `giving ${node} to ${user.name}: permission denied`, 'run `upci bind --user` as root', { cause });
    if (code === 'ENOENT') throw new UpciError('NO_VFIO', `${node} is missing although ${address} is bound to vfio-pci`, 'load vfio-pci (`modprobe vfio-pci`) and make sure devtmpfs is mounted on /dev', { cause });
    throw cause;
  }
  return { info, group, node, members: groupMembers(roots, group) };
}

/**
 * The udev rule that gives the group's node to the user at every boot. It
 * names the group by number: stable while the machine's devices and their
 * probe order stay the same; print it again after a hardware change.
 */
export function udevRule(roots: SysfsRoots, info: PciFunctionInfo, user: UserAccount): string {
  if (info.iommuGroup === undefined) throw new UpciError('NO_IOMMU_GROUP', `${info.address} has no IOMMU group`, 'enable the IOMMU (intel_iommu=on or amd_iommu=on)');
  const members = groupMembers(roots, info.iommuGroup).map((f) => f.address).join(', ');
  return [
    `# upci: IOMMU group ${info.iommuGroup} (${members}) for ${user.name} (uid ${user.uid})`,
    '# install: save as /etc/udev/rules.d/70-upci.rules, then `udevadm control --reload && udevadm trigger --subsystem-match=vfio`',
    `# the group number depends on the devices present and their probe order: print the rule again after a hardware change`,
    `SUBSYSTEM=="vfio", KERNEL=="${info.iommuGroup}", OWNER="${user.name}", MODE="0600"`,
  ].join('\n');
}

/** Who owns the node and its mode, as `ls -l` would say it. */
function ownership(node: string): string {
  try {
    const s = statSync(node);
    return `owned by uid ${s.uid}, mode 0${(s.mode & 0o777).toString(8)}`;
  } catch {
    return 'not readable';
  }
}

/** EACCES/EPERM opening a group node: names the node, its device and the fix. */
export function groupAccessError(node: string, group: number, address: PciAddress | undefined): UpciError {
  const device = address ?? 'DEVICE';
  const user = currentUser();
  return new UpciError(
    'PERMISSION',
    `no permission to open ${node}, the VFIO group node of IOMMU group ${group}${address === undefined ? '' : ` (${address})`}: it is ${ownership(node)}, and upci runs as ${user} (uid ${process.getuid?.()})`,
    `as root, give the group to this user: \`upci bind ${device} --user ${user}\` (until reboot), or install the rule \`upci udev-rule ${device} --user ${user}\` prints (every boot); or run upci as root`,
  );
}
