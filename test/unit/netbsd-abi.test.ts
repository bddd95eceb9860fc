/**
 * The NetBSD port's ABI against its C definitions: pciuserio.h through
 * kernel/netbsd/abi-probe.c (run with the host cc, whose LP64 layout the
 * header guarantees equal to netbsd-amd64's, and cross-compiled with clang
 * for x86_64-unknown-netbsd to check that guarantee), plus the NetBSD
 * system struct the port uses, from a local copy of its definition.
 * Nothing here runs on NetBSD.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { FieldType, Struct } from '../../kernel/abi.js';
import * as abi from '../../kernel/netbsd/pciuser-abi.js';
import { expectedLayout, layoutProbe, runCProbe } from '../support/c-probe.js';
import { layoutFrom, layoutGlobals, netbsdConstants } from '../support/netbsd-probe.js';

const netbsdDir = fileURLToPath(new URL('../../../kernel/netbsd/', import.meta.url));
const includes = ['-I', `${netbsdDir}sys`, '-I', `${netbsdDir}abi-shim`];
const probeSource = readFileSync(`${netbsdDir}abi-probe.c`, 'utf8');

interface ProbeOutput {
  target: string;
  ioctls: Record<string, number>;
  constants: Record<string, number>;
  structs: Record<string, { size: number; offsets: Record<string, number> }>;
}

const hostProbe = (): ProbeOutput => runCProbe(probeSource, 'cc', includes) as ProbeOutput;

/** Our structs as abi-probe.c prints them: an array member only by its name (puc_bars[0].pub_base is puc_bars). */
function asProbeStructs(structs: readonly Struct<Record<string, FieldType>>[]): ProbeOutput['structs'] {
  return Object.fromEntries(structs.map((s) => {
    const offsets: Record<string, number> = {};
    for (const [name, field] of Object.entries(s.fields)) offsets[name.replace(/\[.*$/, '')] ??= field.offset;
    return [s.cName, { size: s.size, offsets }];
  }));
}

test('pciuserio.h ioctl numbers and constants match abi-probe.c', (t) => {
  const probe = hostProbe();
  t.is(probe.target, 'netbsd-amd64');
  t.deepEqual(probe.ioctls, abi.ioctls);
  const ours = Object.fromEntries(Object.keys(probe.constants).map((name) => [name, (abi as Record<string, unknown>)[name]]));
  t.deepEqual(probe.constants, ours);
});

test('pciuserio.h struct sizes and offsets match abi-probe.c', (t) => {
  t.deepEqual(hostProbe().structs, asProbeStructs(abi.pciuserStructs));
});

test('every pciuserio.h member, each BAR of pciuser_claim included, is where the TypeScript says', (t) => {
  const source = `#include <stdio.h>\n#include <stddef.h>\n#include <dev/pci/pciuserio.h>\nint main(void) {\n  ${layoutProbe(abi.pciuserStructs)}\n  return 0;\n}\n`;
  t.deepEqual(runCProbe(source, 'cc', includes), expectedLayout(abi.pciuserStructs));
});

test('clang for x86_64-unknown-netbsd gives abi-probe.c the same values as the host', (t) => {
  const probe = hostProbe();
  const flat: Record<string, number> = {};
  for (const [name, value] of Object.entries({ ...probe.ioctls, ...probe.constants })) flat[`abi_${name}`] = value;
  for (const [tag, s] of Object.entries(probe.structs)) {
    flat[`abi_sizeof_${tag}`] = s.size;
    for (const [member, offset] of Object.entries(s.offsets)) flat[`abi_offsetof_${tag}_${member}`] = offset;
  }
  t.deepEqual(netbsdConstants(probeSource, ['-DABI_PROBE_STATIC', ...includes]), flat);
});

test('every pciuserio.h member matches on x86_64-unknown-netbsd too', (t) => {
  const source = `#include <dev/pci/pciuserio.h>\n${layoutGlobals(abi.pciuserStructs)}\n`;
  t.deepEqual(layoutFrom(abi.pciuserStructs, netbsdConstants(source, includes)), expectedLayout(abi.pciuserStructs));
});

test('mmap cookies of BARs are PCIUSER_MMAP_BAR(bar)', (t) => {
  const bars = [0, 1, 2, 3, 4, 5];
  const source = `#include <dev/pci/pciuserio.h>\n${bars.map((b) => `const unsigned long bar${b} = PCIUSER_MMAP_BAR(${b});`).join('\n')}\n`;
  const values = netbsdConstants(source, includes);
  t.deepEqual(bars.map((b) => values[`bar${b}`]), bars.map(abi.pciuserMmapBar));
});

test('pciio_businfo and PCI_IOC_BUSINFO match <dev/pci/pciio.h>', (t) => {
  // Copied from NetBSD's sys/dev/pci/pciio.h (unchanged since 2001); the shim's _IOR is checked against the real <sys/ioccom.h> by compile-check.sh.
  const source = `#include <sys/ioccom.h>
struct pciio_businfo {
	unsigned int busno;
	unsigned int maxdevs;
};
#define PCI_IOC_BUSINFO _IOR('P', 4, struct pciio_businfo)
const unsigned long ioc = PCI_IOC_BUSINFO;
${layoutGlobals([abi.pciioBusinfo])}
`;
  const values = netbsdConstants(source, includes);
  t.is(values.ioc, abi.PCI_IOC_BUSINFO);
  t.deepEqual(layoutFrom([abi.pciioBusinfo], values), expectedLayout([abi.pciioBusinfo]));
});
