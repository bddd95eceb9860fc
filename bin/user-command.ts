/**
 * `upci bind <address> --user NAME` and `upci udev-rule <address> --user NAME`:
 * a device's VFIO group given to a user, so that `upci run` works as that
 * user (kernel/linux/vfio-user.ts says what else a user needs).
 */
import { functionInfo, type SysfsRoots } from '../kernel/linux/sysfs.js';
import { grantGroup, resolveUser, systemPasswd, udevRule, type PasswdLookup } from '../kernel/linux/vfio-user.js';
import { parsePciAddress } from '../kernel/pci-address.js';

export const USER_USAGE = `  bind <address> --user NAME   also give NAME the device's VFIO group (/dev/vfio/N), so NAME can \`upci run\` it (root)
  udev-rule <address> --user NAME   print the udev rule that gives NAME the device's group at every boot`;

export interface DeviceArgs {
  readonly address: string;
  readonly user: string | undefined;
}

/** `<address> [--user NAME]`: the parsed arguments, or the usage error's text. `--user` is required for udev-rule. */
export function parseDeviceArgs(command: string, args: readonly string[]): DeviceArgs | string {
  let address: string | undefined;
  let user: string | undefined;
  const takesUser = command === 'bind' || command === 'udev-rule';
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (takesUser && (arg === '--user' || arg.startsWith('--user='))) {
      const value = arg === '--user' ? args[++i] : arg.slice('--user='.length);
      if (value === undefined || value === '' || value.startsWith('-')) return `upci ${command}: --user expects a user name or uid`;
      user = value;
    } else if (address === undefined && !arg.startsWith('-')) address = arg;
    else return `upci ${command}: unexpected argument ${JSON.stringify(arg)}`;
  }
  if (address === undefined) return `upci ${command}: expects exactly one PCI address`;
  if (command === 'udev-rule' && user === undefined) return 'upci udev-rule: expects --user NAME';
  return { address, user };
}

/** `upci bind ADDR --user NAME`: what it prints. The user is looked up before anything is bound. */
export function bindForUser(roots: SysfsRoots, address: string, userName: string, lookup: PasswdLookup = systemPasswd): string {
  const pci = parsePciAddress(address);
  const user = resolveUser(userName, lookup);
  const grant = grantGroup(roots, pci, user);
  const others = grant.members.filter((f) => f.address !== pci).map((f) => f.address);
  return [
    `${pci} bound to vfio-pci (IOMMU group ${grant.group}); ${grant.node} now belongs to ${user.name} (uid ${user.uid}), mode 0600`,
    ...(others.length > 0 ? [`  the group also holds ${others.join(', ')}: ${user.name} gets them too`] : []),
    `  until the node is made again (reboot, the group's last device unbound); for every boot: upci udev-rule ${pci} --user ${user.name}`,
    `  ${user.name}'s RLIMIT_MEMLOCK must cover the DMA its drivers map (VFIO pins it): \`${user.name} - memlock KiB\` in /etc/security/limits.conf, LimitMEMLOCK= in a systemd unit, or prlimit --memlock`,
  ].join('\n');
}

/** `upci udev-rule ADDR --user NAME`: the rule, to be saved by root. Needs no root itself. */
export function udevRuleFor(roots: SysfsRoots, address: string, userName: string, lookup: PasswdLookup = systemPasswd): string {
  const user = resolveUser(userName, lookup);
  return udevRule(roots, functionInfo(roots, parsePciAddress(address)), user);
}

