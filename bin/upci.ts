#!/usr/bin/env node
/**
 * upci: list, bind, unbind and inspect PCI functions for userland drivers.
 */
import { UpciError } from '../kernel/errors.js';
import { parsePciAddress } from '../kernel/pci-address.js';
import { bindVfio, defaultRoots, groupBlockers, listFunctions, unbindVfio, type PciFunctionInfo } from '../kernel/linux/sysfs.js';
import { formatId } from '../pci/config.js';
import { PciDevice } from '../pci/device.js';
import { RUN_USAGE, runCommand } from './run-command.js';
import { STATUS_USAGE, statusCommand } from './status-command.js';
import { bindForUser, parseDeviceArgs, udevRuleFor, USER_USAGE } from './user-command.js';

const USAGE = `usage: upci <command>
  list               PCI functions: ids, class, driver, IOMMU group, whether upci can use them
  bind <address>     hand a function to vfio-pci (root)
${USER_USAGE}
  unbind <address>   give it back to its kernel driver (root)
  info <address>     BARs, capabilities and interrupts of a function bound to vfio-pci
${RUN_USAGE}
${STATUS_USAGE}`;

function usability(f: PciFunctionInfo): string {
  // vfio-pci refuses bridges, and handing a host or ISA bridge to userland would take the machine with it.
  if (f.classCode >>> 16 === 0x06) return 'bridge';
  if (f.iommuGroup === undefined) return 'no IOMMU group';
  if (f.driver !== 'vfio-pci') return 'not bound (upci bind)';
  const blockers = groupBlockers(defaultRoots, f.iommuGroup);
  return blockers.length === 0 ? 'usable' : `group shared with ${blockers.map((b) => b.address).join(', ')}`;
}

function list(): void {
  const rows = listFunctions(defaultRoots).map((f) => [
    f.address,
    `${formatId(f.vendor)}:${formatId(f.device)}`,
    formatId(f.classCode, 6),
    f.driver ?? '-',
    f.iommuGroup === undefined ? '-' : String(f.iommuGroup),
    usability(f),
  ]);
  printTable(['ADDRESS', 'ID', 'CLASS', 'DRIVER', 'GROUP', 'UPCI'], rows);
}

function info(address: string): void {
  const device = PciDevice.open(address);
  try {
    const h = device.header();
    console.log(`${device.address}  ${formatId(h.vendor)}:${formatId(h.device)} rev ${formatId(h.revision, 2)}  class ${formatId(h.classCode, 6)}  subsystem ${formatId(h.subsystemVendor)}:${formatId(h.subsystemDevice)}`);
    console.log(`  command 0x${formatId(h.command)}  status 0x${formatId(h.status)}  interrupt pin ${h.interruptPin === 0 ? 'none' : 'INT' + 'ABCD'[h.interruptPin - 1]}`);
    for (const bar of device.bars()) {
      const kind = bar.type === 'io' ? 'I/O ports' : `${bar.type === 'mem64' ? '64-bit' : '32-bit'} memory${bar.prefetchable ? ', prefetchable' : ''}`;
      console.log(`  BAR${bar.index}: ${kind}, ${bar.size} bytes at 0x${bar.base.toString(16)}${bar.mappable ? ', mappable' : ', through the kernel'}`);
    }
    for (const cap of device.capabilities()) {
      console.log(`  capability ${cap.name} (0x${formatId(cap.id, cap.extended ? 4 : 2)}) at 0x${formatId(cap.offset, 3)}`);
    }
    const irqs = device.kernel.irqs;
    console.log(`  interrupts: INTx ${irqs.intx.count}, MSI ${irqs.msi.count}, MSI-X ${irqs.msix.count}`);
  } finally {
    device.close();
  }
}

function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const row of [header, ...rows]) console.log(row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
}

function main(argv: string[]): number {
  const [command, ...args] = argv;
  const needsAddress = command === 'bind' || command === 'unbind' || command === 'info' || command === 'udev-rule';
  if (command === undefined || command === '-h' || command === '--help') {
    console.log(USAGE);
    return command === undefined ? 2 : 0;
  }
  const parsed = needsAddress ? parseDeviceArgs(command, args) : undefined;
  if (typeof parsed === 'string') {
    console.error(`${parsed}\n${USAGE}`);
    return 2;
  }
  const arg = parsed?.address;
  switch (command) {
    case 'list': list(); return 0;
    case 'bind': {
      if (parsed!.user !== undefined) {
        console.log(bindForUser(defaultRoots, arg!, parsed!.user));
        return 0;
      }
      const f = bindVfio(defaultRoots, parsePciAddress(arg!));
      console.log(`${f.address} bound to vfio-pci (IOMMU group ${f.iommuGroup})`);
      return 0;
    }
    case 'udev-rule': console.log(udevRuleFor(defaultRoots, arg!, parsed!.user!)); return 0;
    case 'unbind': { const f = unbindVfio(defaultRoots, parsePciAddress(arg!)); console.log(`${f.address} released to ${f.driver ?? 'no driver'}`); return 0; }
    case 'info': info(arg!); return 0;
    default:
      console.error(`upci: unknown command "${command}"\n${USAGE}`);
      return 2;
  }
}

function fail(e: unknown): void {
  if (!(e instanceof UpciError)) throw e;
  console.error(`upci: ${e.message}`);
  process.exitCode = 1;
}

const argv = process.argv.slice(2);
if (argv[0] === 'run') {
  // No process.exit(): it would wait on the interrupt worker's thread; once every device is released nothing keeps the process.
  runCommand(argv.slice(1)).then((status) => (process.exitCode = status), fail);
} else if (argv[0] === 'status') {
  statusCommand(argv.slice(1)).then((status) => (process.exitCode = status), fail);
} else {
  try {
    process.exitCode = main(argv);
  } catch (e) {
    fail(e);
  }
}
