/**
 * A driver written outside upci, the whole way a user meets it: `npm pack`
 * of this checkout, the tarball installed into a scratch project (native
 * addons built by its install script, as on a user's machine), a TypeScript
 * driver compiled there with `tsc --strict` against the declarations the
 * package ships, and `upci run` from the scratch project's own
 * node_modules/.bin loading it by path. This machine has no PCI device, so
 * the run ends at claiming the device; the same driver shape runs on a real
 * edu in the VM suite (test/vm/outside-driver.test.ts).
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../..', import.meta.url));
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string; devDependencies: Record<string, string> };

/** The user's driver, typed against upci's shipped declarations. */
const DRIVER = `import { setup } from 'xstate';
import { defineDriver, type DriverBus, type DriverInput } from 'upci/drivers/contract.js';

interface Resources { readonly id: number }

function attach(bus: DriverBus): Resources {
  return { id: bus.mapBar(0).read4(0x00) };
}

const machine = setup({
  types: { input: {} as DriverInput<Record<string, never>, Resources> },
}).createMachine({
  id: 'mine',
  context: ({ input }) => input,
  entry: ({ context }) => context.bus.note(\`my driver: id 0x\${context.resources.id.toString(16)}\`),
});

export default defineDriver({
  name: 'my-edu',
  description: 'an edu driver from a repository of its own',
  match: [{ vendor: 0x1234, device: 0x11e8 }],
  options: {},
  attach,
  machine,
});
`;

/** The same driver with a mistake the declarations must catch: a BAR by name. */
const WRONG = DRIVER.replace('bus.mapBar(0)', "bus.mapBar('bar0')");

const TSCONFIG = {
  compilerOptions: {
    target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true,
    types: ['node'], outDir: 'dist', rootDir: 'src', skipLibCheck: false,
  },
  include: ['src'],
};

test('npm pack, installed into a scratch project: a TypeScript driver there compiles against upci\'s declarations (a wrong call does not), and upci run loads it by path', async (t) => {
  t.timeout(600_000, 'packing, installing (native addons built) and compiling');
  const scratch = mkdtempSync(join(tmpdir(), 'upci-user-'));
  const { stdout: packed } = await run('npm', ['pack', '--silent', '--pack-destination', scratch], { cwd: root });
  const tarball = join(scratch, packed.trim().split('\n').at(-1)!);
  t.regex(tarball, new RegExp(`upci-${pkg.version}\\.tgz$`));

  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'my-edu-driver', private: true, type: 'module' }));
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball,
    `typescript@${pkg.devDependencies['typescript']}`, `@types/node@${pkg.devDependencies['@types/node']}`], { cwd: scratch });

  mkdirSync(join(scratch, 'src'));
  writeFileSync(join(scratch, 'tsconfig.json'), JSON.stringify(TSCONFIG));
  const tsc = join(scratch, 'node_modules/typescript/bin/tsc');
  writeFileSync(join(scratch, 'src/driver.ts'), WRONG);
  const wrong = await t.throwsAsync(run(process.execPath, [tsc, '-p', '.'], { cwd: scratch }));
  t.regex((wrong as { stdout?: string }).stdout ?? '', /src\/driver\.ts\(\d+,\d+\): error TS2345: Argument of type 'string' is not assignable to parameter of type 'number'/);
  writeFileSync(join(scratch, 'src/driver.ts'), DRIVER);
  await run(process.execPath, [tsc, '-p', '.'], { cwd: scratch });

  const upci = join(scratch, 'node_modules/.bin/upci');
  const runWith = async (driver: string) => {
    writeFileSync(join(scratch, 'config.json'), JSON.stringify({ devices: [{ address: '0000:00:04.0', driver }] }));
    const failed = await t.throwsAsync(run(upci, ['run', 'config.json'], { cwd: scratch, timeout: 60_000 }));
    return `${(failed as { stderr?: string }).stderr ?? ''}${(failed as { stdout?: string }).stdout ?? ''}`;
  };
  // A module that is not a driver is refused by the config loader, naming the key...
  writeFileSync(join(scratch, 'not-a-driver.js'), 'export const answer = 42;\n');
  const notADriver = await runWith('./not-a-driver.js');
  t.regex(notADriver, /devices\[0\]\.driver: .* is not a driver module/);
  // ...the user's compiled driver passes it, and the run goes on to claim the device, which this machine lacks.
  const claimed = await runWith('./dist/driver.js');
  t.notRegex(claimed, /devices\[0\]\.driver/);
  t.regex(claimed, /0000:00:04\.0/);
  t.log(claimed.trim().split('\n')[0]);
});
