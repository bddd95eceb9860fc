/**
 * A driver from outside the tree under `upci run` (a module path in the
 * config, relative to the config file), and `--watch`: rewriting that
 * module restarts that driver only, in a new thread with the new code,
 * while the device stays claimed and the other devices keep running.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { bench } from './devices.js';

const EDU = parsePciAddress(bench.edu);
const EDU2 = parsePciAddress(bench.edu2);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The compiled fixture, written into a scratch folder as a user's own file
 * would be: its imports made absolute (the folder has no node_modules), its
 * note string `note`.
 */
function writeDriver(file: string, note: string): void {
  const fixture = fileURLToPath(new URL('../fixtures/outside-driver.js', import.meta.url));
  const contract = pathToFileURL(fileURLToPath(new URL('../../drivers/contract.js', import.meta.url))).href;
  const xstate = import.meta.resolve('xstate');
  const text = readFileSync(fixture, 'utf8')
    .replace("from 'xstate'", `from '${xstate}'`)
    .replace("from '../../drivers/contract.js'", `from '${contract}'`)
    .replace("'outside driver v1'", JSON.stringify(note))
    .replace(/\/\/# sourceMappingURL=.*$/m, '');
  writeFileSync(file, text);
}

test('a driver module outside the tree runs under `upci run`; with --watch, rewriting it restarts that driver only, with the new code, without releasing the device', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-outside-'));
  const driverFile = join(dir, 'my-driver.js');
  writeDriver(driverFile, 'outside driver v1');
  const config = join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({
    statsIntervalMs: 500,
    devices: [
      { address: EDU, driver: './my-driver.js' },
      { address: EDU2, driver: 'edu', options: { interrupt: 'msi', raiseIntervalMs: 20 } },
    ],
  }));
  const child = spawn(process.execPath, ['dist/bin/upci.js', 'run', config, '--watch'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  const until = async (what: string, pattern: RegExp, ms = 180_000) => {
    const deadline = Date.now() + ms;
    while (!pattern.test(out)) {
      if (Date.now() > deadline || child.exitCode !== null) {
        child.kill('SIGKILL');
        t.log(out);
        throw new Error(`timed out waiting for ${what}`);
      }
      await sleep(50);
    }
  };
  try {
    await until('the outside driver\'s note', new RegExp(`${EDU} note outside driver v1: id 0x10000ed \\(incarnation 0\\)`));
    await until('edu2 under load', new RegExp(`${EDU2} stats interrupts=[1-9]\\d+`));
    writeDriver(driverFile, 'outside driver v2');
    await until('the new code\'s note', new RegExp(`${EDU} note outside driver v2: id 0x10000ed \\(incarnation 1\\)`));
    const lines = out.split('\n');
    const eduStates = lines.filter((l) => l.includes(`${EDU} my-driver`) || new RegExp(`${EDU} outside-edu \\w+`).test(l)).map((l) => l.split(' ')[3]);
    t.log(eduStates.join(' → '));
    t.deepEqual(eduStates, ['claimed', 'attaching', 'running', 'reloading', 'attaching', 'running'], 'reloaded, not failed, reset or released');
    t.false(new RegExp(`${EDU2} .*(fault|restart|reloading)`).test(out), 'the other device was not touched');
    t.false(/fault/.test(out));
    const threads = lines.filter((l) => l.includes(`${EDU} incarnation`) && l.includes('in thread'));
    t.is(threads.length, 2, 'the new code runs in a new thread');
    child.kill('SIGINT');
    t.is(await exited, 0);
    t.regex(out, /host stopped: 2 device\(s\) released/);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
});

test('a config naming a module path that does not exist, or a module that is not a driver, fails with one config error naming the key', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'upci-outside-'));
  const cases: [string, RegExp][] = [
    ['./absent.js', /devices\[0\]\.driver: no driver module at .*absent\.js/],
    [fileURLToPath(new URL('../../kernel/pci-address.js', import.meta.url)), /devices\[0\]\.driver: file:.*pci-address\.js is not a driver module: it exports no driver/],
  ];
  for (const [driver, pattern] of cases) {
    const config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ devices: [{ address: EDU, driver }] }));
    const child = spawn(process.execPath, ['dist/bin/upci.js', 'run', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    t.log(out.trim());
    t.not(code, 0);
    t.regex(out, pattern);
    t.is(out.match(/devices\[0\]\.driver/g)?.length, 1, 'one error');
  }
});
