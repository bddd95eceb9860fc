/**
 * The guest side of QEMU's monitor (see vm/monitor-relay.ts): for tests
 * that need the emulator itself to act, such as taking a NIC's link down
 * with `set_link`, or unplugging a device (`device_del ID`) and plugging it
 * again (`device_add` of its `qdev` line from devices.json, which names no
 * host file). Needs runInVm({ monitor: true }).
 */
import { existsSync } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

// pcie_aer_inject_error: an uncorrectable error only (no -c, no -a), named as QEMU names them (UNSUP, CMPLTO...).
const ALLOWED = /^(set_link [A-Za-z0-9_.-]+ (on|off)|info network|pcie_aer_inject_error [A-Za-z0-9_-]+ [A-Z_]+|device_del [A-Za-z0-9_-]+|device_add [a-z0-9-]+(,[a-z0-9_.-]+=[A-Za-z0-9_.:-]+)*)$/;
let sequence = 0;

export const monitorAvailable = (): boolean => process.env.UPCI_VM_MONITOR === '1';

/** Runs one monitor command in the QEMU running this guest and returns its output. */
export async function monitorCommand(command: string, timeoutMs = 10_000): Promise<string> {
  if (!ALLOWED.test(command)) throw new Error(`vm/monitor: '${command}' is not a command the bench relays (set_link NAME on|off, info network, pcie_aer_inject_error ID ERROR, device_del ID, device_add DEVICE,KEY=VALUE...)`);
  if (!monitorAvailable()) throw new Error('vm/monitor: this guest was booted without the monitor relay (runInVm({ monitor: true }))');
  const dir = join(process.env.UPCI_VM_OUT ?? '/tmp/upci-out', 'monitor');
  const name = `${process.pid}-${sequence++}`;
  await writeFile(join(dir, `${name}.tmp`), command);
  await rename(join(dir, `${name}.tmp`), join(dir, `${name}.cmd`));
  const out = join(dir, `${name}.out`);
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(out)) {
    if (Date.now() > deadline) throw new Error(`vm/monitor: no answer to '${command}' within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const answer = await readFile(out, 'utf8');
  if (answer.startsWith('relay error:')) throw new Error(`vm/monitor: ${answer}`);
  return answer;
}
