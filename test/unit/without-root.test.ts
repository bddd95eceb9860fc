/**
 * VFIO without root (issue 23), on fabricated sysfs trees and /proc texts:
 * `upci bind --user` gives exactly the device's group node, the errors a
 * user without root meets name the fix, RLIMIT_MEMLOCK is read right.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bindForUser, parseDeviceArgs, udevRuleFor } from '../../bin/user-command.js';
import { memlockError, parseLockedStatus, parseMemlockLimit, type MemlockState } from '../../kernel/linux/memlock.js';
import { groupNode, passwdFile, resolveUser } from '../../kernel/linux/vfio-user.js';
import { fakeRoots } from '../support/fake-sysfs.js';

const PROJECT = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const isRoot = process.getuid?.() === 0;
const NOBODY = 65534;

function passwd(): string {
  const file = join(mkdtempSync(join(tmpdir(), 'upci-passwd-')), 'passwd');
  writeFileSync(file, 'root:x:0:0:root:/root:/bin/sh\nalice:x:1234:2345::/home/alice:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n');
  return file;
}

/** Two vfio-pci devices in groups 3 and 4, each with its root-only group node. */
function twoGroups(extra: { address: string; driver?: string; group?: number }[] = []) {
  const roots = fakeRoots([{ address: '0000:00:04.0', driver: 'vfio-pci', group: 3 }, { address: '0000:00:05.0', driver: 'vfio-pci', group: 4 }, ...extra]);
  for (const group of [3, 4]) {
    writeFileSync(groupNode(roots, group), '');
    chmodSync(groupNode(roots, group), 0o600);
  }
  return roots;
}

const owner = (path: string) => {
  const s = statSync(path);
  return { uid: s.uid, mode: s.mode & 0o777 };
};

test('RLIMIT_MEMLOCK and VmLck/CapEff are read from /proc texts: bytes, unlimited, CAP_IPC_LOCK bit 14', (t) => {
  t.deepEqual(parseMemlockLimit('Max open files            1024                 524288               files\nMax locked memory         65536                131072               bytes\n'), { soft: 65536, hard: 131072 });
  t.deepEqual(parseMemlockLimit('Max locked memory         unlimited            unlimited            bytes\n'), { soft: undefined, hard: undefined });
  t.throws(() => parseMemlockLimit('Max open files 1024 1024 files\n'), { code: 'KERNEL' } as never);
  t.deepEqual(parseLockedStatus('VmLck:\t     132 kB\nCapEff:\t000001ffffffffff\n'), { locked: 132 * 1024, ipcLock: true });
  t.deepEqual(parseLockedStatus('VmLck:\t       0 kB\nCapEff:\t0000000000000000\n'), { locked: 0, ipcLock: false });
  t.deepEqual(parseLockedStatus('VmLck:\t       4 kB\nCapEff:\t000001ffffffbfff\n'), { locked: 4096, ipcLock: false }, 'every capability but CAP_IPC_LOCK');
});

test('this process\'s RLIMIT_MEMLOCK as prlimit set it, and CAP_IPC_LOCK only as root', (t) => {
  const script = `import('${PROJECT}/dist/kernel/linux/memlock.js').then((m) => console.log(JSON.stringify(m.readMemlock())))`;
  const run = (uid?: number) => spawnSync('prlimit', ['--memlock=65536:131072', process.execPath, '-e', script], { encoding: 'utf8', ...(uid === undefined ? {} : { uid, gid: uid }) });
  const own = run();
  t.is(own.status, 0, own.stderr);
  t.like(JSON.parse(own.stdout), { soft: 65536, hard: 131072, ipcLock: isRoot });
  if (!isRoot) return;
  const nobody = run(NOBODY);
  t.is(nobody.status, 0, nobody.stderr);
  t.like(JSON.parse(nobody.stdout), { soft: 65536, hard: 131072, ipcLock: false });
});

test('a DMA map refused under RLIMIT_MEMLOCK names the limit, what is locked, the amount needed and the ways to raise it', (t) => {
  const state: MemlockState = { soft: 64 * 1024, hard: 128 * 1024, locked: 48 * 1024, ipcLock: false };
  const e = memlockError('VFIO_IOMMU_MAP_DMA iova 0x10000 size 1048576', 1 << 20, state, 'alice', 4242);
  t.is(e?.code, 'MEMLOCK');
  t.regex(e!.message, /^VFIO_IOMMU_MAP_DMA iova 0x10000 size 1048576 refused: RLIMIT_MEMLOCK is 64 KiB \(hard 128 KiB\) and this process has 48 KiB locked already; pinning 1 MiB more needs at least 1072 KiB/);
  t.regex(e!.fix!, /for alice to at least 2 MiB/);
  t.regex(e!.fix!, /`ulimit -l 2048`/);
  t.regex(e!.fix!, /`sudo prlimit --pid 4242 --memlock=2097152:2097152`/);
  t.regex(e!.fix!, /`alice - memlock 2048` in \/etc\/security\/limits\.conf/);
  t.regex(e!.fix!, /`LimitMEMLOCK=2M`/);
  // Not the limit's doing: the kernel's own error stays.
  t.is(memlockError('map', 16 * 1024, state), undefined, 'within the limit');
  t.is(memlockError('map', 1 << 20, { ...state, ipcLock: true }), undefined, 'CAP_IPC_LOCK');
  t.is(memlockError('map', 1 << 20, { ...state, soft: undefined }), undefined, 'unlimited');
});

test('--user: a name or uid of the user database; an unknown or malformed one is NO_USER naming it', (t) => {
  const lookup = passwdFile(passwd());
  t.deepEqual(resolveUser('alice', lookup), { name: 'alice', uid: 1234, gid: 2345 });
  t.deepEqual(resolveUser('65534', lookup), { name: 'nobody', uid: 65534, gid: 65534 });
  for (const bad of ['mallory', '999', 'alice:x', 'x\nalice', '']) {
    t.throws(() => resolveUser(bad, lookup), { code: 'NO_USER', message: new RegExp(`no user ${JSON.stringify(JSON.stringify(bad)).slice(1, -1)}`) } as never);
  }
  // The system's database: nobody is there on Debian.
  t.like(resolveUser('nobody'), { uid: NOBODY });
});

test('bind and udev-rule arguments: --user needs a value, udev-rule needs --user, other commands take none', (t) => {
  t.deepEqual(parseDeviceArgs('bind', ['0000:00:04.0']), { address: '0000:00:04.0', user: undefined });
  t.deepEqual(parseDeviceArgs('bind', ['0000:00:04.0', '--user', 'alice']), { address: '0000:00:04.0', user: 'alice' });
  t.deepEqual(parseDeviceArgs('bind', ['--user=alice', '0000:00:04.0']), { address: '0000:00:04.0', user: 'alice' });
  t.is(parseDeviceArgs('bind', ['0000:00:04.0', '--user']), 'upci bind: --user expects a user name or uid');
  t.is(parseDeviceArgs('bind', ['0000:00:04.0', '--user', '--x']), 'upci bind: --user expects a user name or uid');
  t.is(parseDeviceArgs('udev-rule', ['0000:00:04.0']), 'upci udev-rule: expects --user NAME');
  t.is(parseDeviceArgs('unbind', ['0000:00:04.0', '--user', 'alice']), 'upci unbind: unexpected argument "--user"');
  t.is(parseDeviceArgs('bind', []), 'upci bind: expects exactly one PCI address');
  t.is(parseDeviceArgs('info', ['0000:00:04.0', '0000:00:05.0']), 'upci info: unexpected argument "0000:00:05.0"');
});

test('the CLI: an unknown --user is refused before anything is bound (exit 1), a missing value is a usage error (exit 2)', (t) => {
  // An address no machine has: were the user not checked first, this would say "no PCI device".
  const unknown = spawnSync(process.execPath, ['dist/bin/upci.js', 'bind', '0000:7f:1f.7', '--user', 'no-such-user-upci'], { cwd: PROJECT, encoding: 'utf8' });
  t.is(unknown.status, 1);
  t.regex(unknown.stderr, /^upci: no user "no-such-user-upci" in the user database\n {2}fix: name an existing account/);
  const missing = spawnSync(process.execPath, ['dist/bin/upci.js', 'bind', '0000:7f:1f.7', '--user'], { cwd: PROJECT, encoding: 'utf8' });
  t.is(missing.status, 2);
  t.regex(missing.stderr, /^upci bind: --user expects a user name or uid\nusage:/);
});

test('bind --user gives the user exactly the device\'s group node (0600); the other group stays root\'s', (t) => {
  if (!isRoot) return t.pass('chown needs root');
  const roots = twoGroups();
  const out = bindForUser(roots, '0000:00:04.0', 'alice', passwdFile(passwd()));
  t.regex(out, /^0000:00:04\.0 bound to vfio-pci \(IOMMU group 3\); .*\/vfio\/3 now belongs to alice \(uid 1234\), mode 0600\n/);
  t.regex(out, /upci udev-rule 0000:00:04\.0 --user alice/);
  t.regex(out, /RLIMIT_MEMLOCK/);
  t.deepEqual(owner(groupNode(roots, 3)), { uid: 1234, mode: 0o600 });
  t.is(statSync(groupNode(roots, 3)).gid, 2345);
  t.deepEqual(owner(groupNode(roots, 4)), { uid: 0, mode: 0o600 });
});

test('bind --user of a group that is not viable gives nothing; an unknown user binds nothing', (t) => {
  const roots = twoGroups([{ address: '0000:00:04.1', driver: 'snd_hda_intel', group: 3 }]);
  t.throws(() => bindForUser(roots, '0000:00:04.0', 'alice', passwdFile(passwd())), { code: 'GROUP_NOT_VIABLE', message: /0000:00:04\.1 \(bound to snd_hda_intel\)/ } as never);
  t.deepEqual(owner(groupNode(roots, 3)), { uid: process.getuid!(), mode: 0o600 });
  const unbound = fakeRoots([{ address: '0000:00:06.0', driver: 'nvme', group: 5 }]);
  t.throws(() => bindForUser(unbound, '0000:00:06.0', 'mallory', passwdFile(passwd())), { code: 'NO_USER' } as never);
  t.false(existsSync(join(unbound.sys, 'devices/pci0000:00/0000:00:06.0/driver_override')), 'nothing written to sysfs');
});

test('udev-rule: one rule for the device\'s group and the user, naming the group\'s devices', (t) => {
  const roots = twoGroups([{ address: '0000:00:04.1', driver: 'vfio-pci', group: 3 }]);
  const rule = udevRuleFor(roots, '0000:00:04.0', 'alice', passwdFile(passwd()));
  t.regex(rule, /^# upci: IOMMU group 3 \(0000:00:04\.0, 0000:00:04\.1\) for alice \(uid 1234\)\n/);
  t.true(rule.endsWith('\nSUBSYSTEM=="vfio", KERNEL=="3", OWNER="alice", MODE="0600"'));
  t.throws(() => udevRuleFor(roots, '0000:00:04.0', 'mallory', passwdFile(passwd())), { code: 'NO_USER' } as never);
});

test('a user opening a group node not given to it: PERMISSION naming the node, owner and mode, the device and `upci bind --user`', (t) => {
  if (!isRoot) return t.pass('needs root to run a child as nobody');
  const roots = twoGroups();
  chmodSync(dirname(roots.sys), 0o755);
  const script = `import('${PROJECT}/dist/kernel/linux/vfio.js').then((m) => {
    try { new m.VfioPort(${JSON.stringify(roots)}).open('0000:00:05.0'); console.log('opened'); }
    catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }
  })`;
  const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', uid: NOBODY, gid: NOBODY });
  t.is(child.status, 0, child.stderr);
  const e = JSON.parse(child.stdout) as { code: string; message: string };
  t.is(e.code, 'PERMISSION');
  t.regex(e.message, /^no permission to open \S+\/dev\/vfio\/4, the VFIO group node of IOMMU group 4 \(0000:00:05\.0\): it is owned by uid 0, mode 0600, and upci runs as nobody \(uid 65534\)\n/);
  t.regex(e.message, /fix: as root, give the group to this user: `upci bind 0000:00:05\.0 --user nobody` \(until reboot\), or install the rule `upci udev-rule 0000:00:05\.0 --user nobody` prints/);
});
