/**
 * Without root (issue 23), in the guest: root runs `upci bind EDU --user
 * nobody` once; from then on every `upci run` here is uid 65534 (nobody, of
 * the host's /etc/passwd the guest chroots), spawned with uid/gid (libuv
 * drops the supplementary groups). The user drives the edu whose group it
 * was given; edu2's group stays root's and a config naming it is refused
 * whole with the permission error; a group node given by hand but not
 * viable is refused as such; under a small RLIMIT_MEMLOCK (prlimit) the
 * driver's second DMA map fails with the MEMLOCK error naming the limit.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { until, within } from '../support/bounded.js';
import { bench } from './devices.js';

const NOBODY = 65534;
/** The CLI of the tree this file was built into (a copy of dist/ runs its own). */
const UPCI = fileURLToPath(new URL('../../bin/upci.js', import.meta.url));
const group = (address: string) => Number(basename(readlinkSync(`/sys/bus/pci/devices/${address}/iommu_group`)));
const node = (address: string) => `/dev/vfio/${group(address)}`;
const owner = (path: string) => {
  const s = statSync(path);
  return { uid: s.uid, mode: s.mode & 0o777 };
};

const dir = mkdtempSync(join(tmpdir(), 'upci-user-'));
chmodSync(dir, 0o755);

function config(name: string, devices: object[], extra: object = {}): string {
  const file = join(dir, `${name}.json`);
  writeFileSync(file, JSON.stringify({ statsIntervalMs: 250, ...extra, devices }));
  return file;
}

interface Run {
  out: () => string;
  exited: Promise<number | null>;
  kill: (signal: NodeJS.Signals) => void;
}

/** `upci ARGS` as nobody, under `prlimit --memlock=N:N` when memlock is given. */
function asNobody(args: string[], memlock?: number): Run {
  const upci = [process.execPath, UPCI, ...args];
  const [command, ...rest] = memlock === undefined ? upci : ['prlimit', `--memlock=${memlock}:${memlock}`, ...upci];
  const child = spawn(command!, rest, { uid: NOBODY, gid: NOBODY, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return { out: () => out, exited: new Promise((resolve) => child.on('exit', resolve)), kill: (s) => child.kill(s) };
}

async function finished(run: Run, ms: number, what: string): Promise<{ code: number | null; out: string }> {
  const code = await within(ms, run.exited, what).catch((e: unknown) => {
    run.kill('SIGKILL');
    throw new Error(`${(e as Error).message}\n${run.out()}`);
  });
  return { code, out: run.out() };
}

test.serial('root: `upci bind EDU --user nobody` makes exactly its group node nobody\'s (0600); edu2\'s stays root\'s; /dev/vfio/vfio is 0666', (t) => {
  t.deepEqual(owner(node(bench.edu)), { uid: 0, mode: 0o600 }, 'the kernel makes group nodes root-only');
  const bind = spawnSync(process.execPath, [UPCI, 'bind', bench.edu, '--user', 'nobody'], { encoding: 'utf8' });
  t.log(bind.stdout + bind.stderr);
  t.is(bind.status, 0);
  t.regex(bind.stdout, new RegExp(`^${bench.edu} bound to vfio-pci \\(IOMMU group ${group(bench.edu)}\\); ${node(bench.edu)} now belongs to nobody \\(uid 65534\\), mode 0600`));
  t.deepEqual(owner(node(bench.edu)), { uid: NOBODY, mode: 0o600 });
  t.deepEqual(owner(node(bench.edu2)), { uid: 0, mode: 0o600 });
  t.is(statSync('/dev/vfio/vfio').mode & 0o666, 0o666);
  const rule = spawnSync(process.execPath, [UPCI, 'udev-rule', bench.edu, '--user', 'nobody'], { encoding: 'utf8', uid: NOBODY, gid: NOBODY });
  t.is(rule.status, 0, rule.stderr);
  t.true(rule.stdout.trimEnd().endsWith(`SUBSYSTEM=="vfio", KERNEL=="${group(bench.edu)}", OWNER="nobody", MODE="0600"`), rule.stdout);
});

test.serial('nobody: `upci run` drives the edu it was given (interrupts counted), SIGINT releases it, exit 0', async (t) => {
  const run = asNobody(['run', config('edu', [{ address: bench.edu, driver: 'edu', options: { interrupt: 'msi' } }])]);
  // A driver thread needs 5-18 s to load its modules in this guest.
  await until('nobody\'s edu to count interrupts', () => new RegExp(`${bench.edu} stats interrupts=[1-9]`).test(run.out()) || /upci: /.test(run.out()), 180_000, 50)
    .catch((e: unknown) => {
      run.kill('SIGKILL');
      throw new Error(`${(e as Error).message}\n${run.out()}`);
    });
  run.kill('SIGINT');
  const { code, out } = await finished(run, 30_000, 'nobody\'s `upci run` did not exit after SIGINT');
  t.log(out.split('\n').filter((l) => !l.includes(' stats ')).slice(-8).join('\n'));
  t.regex(out, new RegExp(`${bench.edu} stats interrupts=[1-9]`));
  t.regex(out, /host stopped: 1 device\(s\) released/);
  t.is(code, 0);
});

test.serial('nobody: a config naming edu2, whose group was not given, is refused whole with the permission error and its fix; the edu is not driven', async (t) => {
  const file = config('both', [
    { address: bench.edu, driver: 'edu' },
    { address: bench.edu2, driver: 'edu' },
  ]);
  const { code, out } = await finished(asNobody(['run', file]), 60_000, 'nobody\'s `upci run` of edu2 did not end');
  t.log(out);
  t.is(code, 1);
  t.regex(out, new RegExp(`^upci: devices\\[1\\]\\.address: cannot claim ${bench.edu2}: no permission to open ${node(bench.edu2)}, the VFIO group node of IOMMU group ${group(bench.edu2)} \\(${bench.edu2}\\): it is owned by uid 0, mode 0600, and upci runs as nobody \\(uid 65534\\)\n`));
  t.regex(out, new RegExp(`fix: as root, give the group to this user: \`upci bind ${bench.edu2} --user nobody\``));
  t.notRegex(out, /stats interrupts/);
  t.deepEqual(owner(node(bench.edu2)), { uid: 0, mode: 0o600 });
});

test.serial('nobody given (by hand) the node of a group that is not viable: refused naming the kernel driver that spoils it', async (t) => {
  const shared = node(bench.eduInSharedGroup);
  chownSync(shared, NOBODY, NOBODY);
  t.teardown(() => chownSync(shared, 0, 0));
  const { code, out } = await finished(asNobody(['run', config('shared', [{ address: bench.eduInSharedGroup, driver: 'edu' }])]), 60_000, 'nobody\'s `upci run` of a non-viable group did not end');
  t.log(out);
  t.is(code, 1);
  t.regex(out, new RegExp(`IOMMU group ${group(bench.eduInSharedGroup)} is not viable: it also holds \\S+ \\(bound to uio_pci_generic\\)`));
  t.regex(out, /fix: bind every device of the group to vfio-pci \(as root\)/);
});

test.serial('nobody under RLIMIT_MEMLOCK 4 KiB: the edu driver\'s second 4 KiB DMA map fails with the MEMLOCK error naming the limit, what is locked and the fix', async (t) => {
  const file = config('memlock', [{ address: bench.edu, driver: 'edu' }], { restart: { initialDelayMs: 100, maxDelayMs: 100, maxRestarts: 0 } });
  const run = asNobody(['run', file], 4096);
  await until('the attach fault', () => /fault attach/.test(run.out()) || /released/.test(run.out()), 180_000, 50).catch(() => undefined);
  run.kill('SIGINT');
  const { out } = await finished(run, 30_000, 'nobody\'s `upci run` under a small memlock limit did not end');
  t.log(out.split('\n').filter((l) => !l.includes(' stats ')).join('\n'));
  t.regex(out, /fault attach: .*VFIO_IOMMU_MAP_DMA iova 0x[0-9a-f]+ size 4096 refused: RLIMIT_MEMLOCK is 4 KiB \(hard 4 KiB\) and this process has 4 KiB locked already; pinning 4 KiB more needs at least 8 KiB/);
  t.regex(out, /fix: raise RLIMIT_MEMLOCK for nobody to at least 1 MiB .*`ulimit -l 1024`.*`sudo prlimit --pid \d+ --memlock=1048576:1048576`.*`nobody - memlock 1024` in \/etc\/security\/limits\.conf.*`LimitMEMLOCK=1M`/);
});
