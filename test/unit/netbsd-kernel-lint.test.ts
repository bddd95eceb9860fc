/**
 * Checks over kernel/netbsd/sys/dev/pci/pci_user.c that hold by
 * construction and would silently break in an edit: the kernel code cannot
 * run here, so these are read off the source. Each names the rule of issue
 * 15 it keeps (see kernel/netbsd/DESIGN.md).
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DMA_ADDRESS_LIMIT_MIN } from '../../kernel/netbsd/pciuser-limits.js';

const netbsdDir = fileURLToPath(new URL('../../../kernel/netbsd/', import.meta.url));
const source = readFileSync(`${netbsdDir}sys/dev/pci/pci_user.c`, 'utf8');
const manPage = readFileSync(`${netbsdDir}share/man/man4/pciuser.4`, 'utf8');
/** The C without comments, so that prose about a forbidden call does not count as one. */
const code = source.replace(/\/\*[\s\S]*?\*\//g, '');

test('no bus_dma call may sleep for a user-sized request (BUS_DMA_NOWAIT only)', (t) => {
  t.deepEqual(code.match(/BUS_DMA_WAITOK/g) ?? [], []);
  for (const call of ['bus_dmamem_alloc', 'bus_dmamem_map', 'bus_dmamap_create', 'bus_dmamap_load', 'bus_dmatag_subregion']) {
    t.true(new RegExp(`${call}\\(`).test(code), `${call} is called`);
  }
  t.regex(code, /bus_dmamem_alloc\([^;]*BUS_DMA_NOWAIT\)/);
  t.regex(code, /bus_dmamap_create\([^;]*BUS_DMA_NOWAIT,/);
  t.regex(code, /bus_dmatag_subregion\([^;]*BUS_DMA_NOWAIT\)/);
});

test('both DMA structs check their boundary with pciuser_boundary_ok (0 or a power of two >= PAGE_SIZE)', (t) => {
  t.regex(code, /pciuser_boundary_ok\(a->pdm_boundary\)/);
  t.regex(code, /pciuser_boundary_ok\(a->pdc_boundary\)/);
  t.regex(code, /boundary >= PAGE_SIZE/);
});

test('pci(4) ioctls go through cdev_ioctl(), never straight to pci_cdevsw', (t) => {
  t.deepEqual(code.match(/pci_cdevsw\s*\.\s*d_\w+/g) ?? [], []);
  t.regex(code, /cdev_ioctl\(pf->pf_dev,/);
});

test('vmobjlock is taken only through the NetBSD-version macros', (t) => {
  const uses = code.split('\n').filter((line) => line.includes('vmobjlock'));
  t.is(uses.length, 4, uses.join('\n'));
  t.true(uses.every((line) => /^#define\tpciuser_obj_(un)?lock\(uobj\)\t+(rw|mutex)_(enter|exit)\(\(uobj\)->vmobjlock/.test(line)), uses.join('\n'));
});

test('the claim is authorized with the caller\'s credentials at the call, not the opener\'s', (t) => {
  t.regex(code, /kauth_authorize_machdep\(kauth_cred_get\(\),\s*KAUTH_MACHDEP_UNMANAGEDMEM/);
  t.notRegex(code, /kauth_authorize_\w+\(fp->f_cred/);
});

test('a softint is established only with interrupts, and given back by their teardown', (t) => {
  const establishes = [...code.matchAll(/softint_establish\(/g)].length;
  t.is(establishes, 1);
  const inEstablish = code.slice(code.indexOf('\npciuser_intr_establish('), code.indexOf('\npciuser_intr_setack('));
  t.regex(inEstablish, /softint_establish\(/);
  const inTeardown = code.slice(code.indexOf('\npciuser_intr_teardown('), code.indexOf('\npciuser_intr_establish('));
  t.regex(inTeardown, /softint_disestablish\(sih\)/);
  t.notRegex(code.slice(code.indexOf('\npciuser_open('), code.indexOf('\npciuser_open(') + 2000), /softint/);
});

test('every errno pci_user.c returns is in the ERRORS section of pciuser.4', (t) => {
  const returned = new Set([...code.matchAll(/(?:return|error =|[?:])\s+(E[A-Z]{2,})\b/g)].map((m) => m[1]!));
  returned.delete('ERESTART'); // the fault handler's "try again" to uvm, never seen by a process
  t.true(returned.size >= 10, [...returned].join(' '));
  const errors = manPage.slice(manPage.indexOf('.Sh ERRORS'), manPage.indexOf('.Sh SEE ALSO'));
  const missing = [...returned].filter((e) => !new RegExp(`\\.It Bq Er ${e}\\b`).test(errors));
  t.deepEqual(missing, []);
});

test('every hw.pciuser sysctl pci_user.c creates is documented in pciuser.4', (t) => {
  const setup = code.slice(code.indexOf('SYSCTL_SETUP('), code.indexOf('\npciuser_charge('));
  const nodes = [...setup.matchAll(/\{ "(\w+)",/g)].map((m) => m[1]!);
  t.deepEqual(nodes.sort(), ['dma_file_max', 'dma_total', 'dma_total_max']);
  for (const node of nodes) t.true(manPage.includes(`hw.pciuser.${node}`), node);
});

test('the port\'s lowest DMA address limit is the one pciuser_dmatag() refuses below', (t) => {
  const m = /if \(maxaddr < (0x[0-9a-f]+)\)\s*return EINVAL;/.exec(code);
  t.truthy(m, 'pciuser_dmatag() has its lower limit');
  t.is(BigInt(m![1]!), DMA_ADDRESS_LIMIT_MIN);
});
