/**
 * The TypeScript port's copies of pciuser(4)'s limits (kernel/netbsd/
 * pciuser-limits.ts mirrors pci_user.c), each tested on both sides, and the
 * port's NetbsdDevice built from a claim reply as the kernel would fill it.
 * Nothing here runs on NetBSD or makes a system call: every refusal tested
 * happens before the ioctl.
 */
import test from 'ava';
import { UpciError } from '../../kernel/errors.js';
import { SyscallError } from '../../kernel/errors.js';
import type { DmaConstraints } from '../../kernel/port.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import * as nb from '../../kernel/netbsd/libc.js';
import * as abi from '../../kernel/netbsd/pciuser-abi.js';
import { barMmapAreas, DMA_ADDRESS_LIMIT_MIN, DMA_SIZE_MAX, dmaRequest, PAGE_SIZE, syncRequest, touchesHole } from '../../kernel/netbsd/pciuser-limits.js';
import { dmaError, NetbsdDevice } from '../../kernel/netbsd/pciuser.js';

const U64_MAX = (1n << 64n) - 1n;
const anyDevice: DmaConstraints = { alignment: 0n, boundary: 0n, addressLimit: U64_MAX, maxSegments: 1 << 20 };
const outOfRange = { instanceOf: UpciError, message: /./ } as const;
const refuses = (t: import('ava').ExecutionContext, f: () => unknown, pattern: RegExp): void => {
  const e = t.throws(f, outOfRange);
  t.is((e as UpciError).code, 'OUT_OF_RANGE');
  t.regex(e!.message, pattern);
};

test('DMA size: 1 byte to 1 TiB - 1, rounded up to pages', (t) => {
  t.is(dmaRequest(1, anyDevice).size, PAGE_SIZE);
  t.is(dmaRequest(PAGE_SIZE + 1, anyDevice).size, 2 * PAGE_SIZE);
  t.is(dmaRequest(DMA_SIZE_MAX, anyDevice).size, DMA_SIZE_MAX + 1);
  refuses(t, () => dmaRequest(0, anyDevice), /1 byte to/);
  refuses(t, () => dmaRequest(DMA_SIZE_MAX + 1, anyDevice), /1 TiB/);
  refuses(t, () => dmaRequest(1.5, anyDevice), /1\.5 asked/);
});

test('DMA boundary: 0 or a power of two of at least a page (x86 bus_dma asserts it)', (t) => {
  t.is(dmaRequest(PAGE_SIZE, { ...anyDevice, boundary: 0n }).boundary, 0n);
  t.is(dmaRequest(PAGE_SIZE, { ...anyDevice, boundary: BigInt(PAGE_SIZE) }).boundary, BigInt(PAGE_SIZE));
  refuses(t, () => dmaRequest(PAGE_SIZE, { ...anyDevice, boundary: BigInt(PAGE_SIZE / 2) }), /boundary 2048/);
  refuses(t, () => dmaRequest(PAGE_SIZE, { ...anyDevice, boundary: 2n }), /boundary 2 /);
  refuses(t, () => dmaRequest(PAGE_SIZE, { ...anyDevice, boundary: BigInt(PAGE_SIZE) * 3n }), /power of two/);
});

test('DMA in one segment must fit inside its boundary', (t) => {
  const one = { ...anyDevice, maxSegments: 1, boundary: 0x10000n };
  t.is(dmaRequest(0x10000, one).maxSegments, 1);
  refuses(t, () => dmaRequest(0x10001, one), /cannot stay within a 65536-byte boundary/);
  // x86 splits one run at each boundary it crosses: 17 pages, not aligned to
  // the boundary, may touch three 64 KiB windows (issue 24, N4: EFBIG there
  // loses the pages, so the kernel refuses up front).
  refuses(t, () => dmaRequest(0x10001, { ...one, maxSegments: 2 }), /may need 3 segments; 2 allowed/);
  t.is(dmaRequest(0x10001, { ...one, maxSegments: 3 }).maxSegments, 3);
  t.is(dmaRequest(0x10001, { ...one, maxSegments: 2, alignment: 0x10000n }).maxSegments, 2);
});

test('DMA sync: PRE or POST operations, not both, and at least one byte (issue 24, N2)', (t) => {
  const { PCIUSER_SYNC_PREREAD: PRR, PCIUSER_SYNC_POSTREAD: POR, PCIUSER_SYNC_PREWRITE: PRW, PCIUSER_SYNC_POSTWRITE: POW } = abi;
  for (const ok of [PRR, PRW, PRR | PRW, POR, POW, POR | POW]) t.notThrows(() => syncRequest(ok, 0, 1));
  for (const mixed of [PRR | POR, PRW | POW, PRR | POW, PRW | POR, 0xf]) refuses(t, () => syncRequest(mixed, 0, 1), /mix PRE and POST/);
  refuses(t, () => syncRequest(0, 0, 1), /at least one/);
  refuses(t, () => syncRequest(0x10, 0, 1), /only PREREAD/);
  refuses(t, () => syncRequest(PRW, 0, 0), /at least one byte/);
  refuses(t, () => syncRequest(PRW, -1, 1), /non-negative/);
});

test('DMA alignment is 0 or a power of two', (t) => {
  t.is(dmaRequest(PAGE_SIZE, { ...anyDevice, alignment: 1n << 21n }).alignment, 1n << 21n);
  refuses(t, () => dmaRequest(PAGE_SIZE, { ...anyDevice, alignment: 3n << 20n }), /alignment 3145728/);
});

test('DMA segments: at most one per page and PCIUSER_DMA_MAXSEGS', (t) => {
  const pages = abi.PCIUSER_DMA_MAXSEGS + 1;
  t.is(dmaRequest(pages * PAGE_SIZE, { ...anyDevice, maxSegments: abi.PCIUSER_DMA_MAXSEGS }).maxSegments, abi.PCIUSER_DMA_MAXSEGS);
  t.is(dmaRequest(pages * PAGE_SIZE, { ...anyDevice, maxSegments: abi.PCIUSER_DMA_MAXSEGS + 1 }).maxSegments, abi.PCIUSER_DMA_MAXSEGS);
  t.is(dmaRequest(3 * PAGE_SIZE, anyDevice).maxSegments, 3);
  refuses(t, () => dmaRequest(PAGE_SIZE, { ...anyDevice, maxSegments: 0 }), /at least one segment/);
});

test('DMA address limit: at least 16 MiB - 1; all 64 bits ask for the tag\'s own limit', (t) => {
  t.is(dmaRequest(PAGE_SIZE, anyDevice).maxaddr, 0n);
  t.is(dmaRequest(PAGE_SIZE, { ...anyDevice, addressLimit: 0xffffffffn }).maxaddr, 0xffffffffn);
  t.is(dmaRequest(PAGE_SIZE, { ...anyDevice, addressLimit: DMA_ADDRESS_LIMIT_MIN }).maxaddr, DMA_ADDRESS_LIMIT_MIN);
  refuses(t, () => dmaRequest(PAGE_SIZE, { ...anyDevice, addressLimit: DMA_ADDRESS_LIMIT_MIN - 1n }), /at least 0xffffff/);
  // 0 would be pdm_maxaddr's "default": never sent for a device that reaches nothing.
  refuses(t, () => dmaRequest(PAGE_SIZE, { ...anyDevice, addressLimit: 0n }), /reaches 0x0/);
});

test('EDQUOT from a DMA ioctl names the sysctl caps; other errors pass through', (t) => {
  const quota = dmaError(new SyscallError('PCIUSER_IOC_DMAMEM_ALLOC', nb.EDQUOT));
  t.true(quota instanceof UpciError);
  t.regex((quota as UpciError).message, /hw\.pciuser\.dma_file_max/);
  const other = new SyscallError('PCIUSER_IOC_DMAMEM_ALLOC', 12);
  t.is(dmaError(other), other);
});

test('MSI-X holes: PIO is refused on their exact bytes, mmap on their pages', (t) => {
  const holes = [{ offset: 0x2000, size: 0x30 }];
  t.false(touchesHole(holes, 0x1ffc, 4, false));
  t.true(touchesHole(holes, 0x1ffe, 4, false));
  t.true(touchesHole(holes, 0x2000, 1, false));
  t.true(touchesHole(holes, 0x202f, 1, false));
  t.false(touchesHole(holes, 0x2030, 4, false));
  t.true(touchesHole(holes, 0x2030, 4, true));
  t.true(touchesHole(holes, 0x2fff, 1, true));
  t.false(touchesHole(holes, 0x3000, PAGE_SIZE, true));
  t.false(touchesHole(holes, 0, 0x2000, true));
});

test('a mappable BAR is offered around the pages of its MSI-X table and PBA', (t) => {
  t.deepEqual(barMmapAreas(0x4000, []), [{ offset: 0, size: 0x4000 }]);
  t.deepEqual(barMmapAreas(0x4000, [{ offset: 0x2000, size: 0x30 }]), [{ offset: 0, size: 0x2000 }, { offset: 0x3000, size: 0x1000 }]);
  t.deepEqual(barMmapAreas(0x4000, [{ offset: 0x3000, size: 0x800 }, { offset: 0, size: 0x10 }]), [{ offset: 0x1000, size: 0x2000 }]);
  t.deepEqual(barMmapAreas(0x4000, [{ offset: 0x2000, size: 0x30 }, { offset: 0x2800, size: 8 }]), [{ offset: 0, size: 0x2000 }, { offset: 0x3000, size: 0x1000 }]);
  t.deepEqual(barMmapAreas(0x1000, [{ offset: 0, size: 0x1000 }]), []);
});

/** A claim reply as pci_user.c fills it: BAR0 memory with MSI-X table at 0x2000, BAR2 unassigned, BAR4 I/O. */
function claimReply(cfgsize: number): Buffer {
  const t = abi.pciuserClaim;
  const claim = t.encode({
    puc_version: abi.PCIUSER_ABI_VERSION, puc_cfgsize: cfgsize, puc_caps: abi.PCIUSER_CAP_MSIX, puc_msix_count: 3,
    'puc_bars[0].pub_flags': abi.PCIUSER_BAR_VALID | abi.PCIUSER_BAR_MMAP,
    'puc_bars[0].pub_size': 0x4000n,
    'puc_bars[0].pub_cookie': BigInt(abi.pciuserMmapBar(0)),
    'puc_bars[0].pub_msix_table': 0x2000n,
    'puc_bars[0].pub_msix_table_size': 0x30n,
    'puc_bars[0].pub_msix_pba': 0x2800n,
    'puc_bars[0].pub_msix_pba_size': 8n,
    'puc_bars[2].pub_flags': abi.PCIUSER_BAR_UNASSIGNED,
    'puc_bars[2].pub_size': 0x1000n,
    'puc_bars[4].pub_flags': abi.PCIUSER_BAR_VALID | abi.PCIUSER_BAR_IO,
    'puc_bars[4].pub_size': 0x20n,
  });
  return claim;
}

const address = parsePciAddress('0000:00:04.0');
// Never a real descriptor: the refusals tested happen before any system call.
const NO_FD = -1;

/**
 * The other side of a limit: the request passes the port's checks and gets
 * as far as the ioctl, which cannot work here (NetBSD's libc is not on this
 * Linux machine), so whatever it throws is not the port's refusal.
 */
function reachesKernel(t: import('ava').ExecutionContext, f: () => unknown, refusal: string): void {
  const e = t.throws(f);
  t.false(e instanceof UpciError && e.code === refusal, `refused by the port: ${e?.message}`);
}

test('the claimed device\'s config space is the size the kernel reports, no more', (t) => {
  for (const size of [256, 4096]) {
    const device = new NetbsdDevice(address, NO_FD, claimReply(size));
    t.is(device.region(7).size, size);
    const e = t.throws(() => device.readRegion(7, size, Buffer.alloc(4)), { instanceOf: UpciError });
    t.is((e as UpciError).code, 'OUT_OF_RANGE');
    reachesKernel(t, () => device.readRegion(7, size - 4, Buffer.alloc(4)), 'OUT_OF_RANGE');
  }
});

test('BARs: holes cut out of the mmap areas, unassigned BARs absent, PIO into the MSI-X table refused', (t) => {
  const device = new NetbsdDevice(address, NO_FD, claimReply(256));
  t.deepEqual(device.region(0).mmapAreas, [{ offset: 0, size: 0x2000 }, { offset: 0x3000, size: 0x1000 }]);
  t.is(device.regions[2]!.size, 0);
  t.false(device.regions[2]!.readable);
  t.is(device.region(4).size, 0x20);
  t.deepEqual(device.region(4).mmapAreas, []);
  const e = t.throws(() => device.writeRegion(0, 0x2000, Buffer.alloc(4)), { instanceOf: UpciError });
  t.is((e as UpciError).code, 'PERMISSION');
  t.regex(e!.message, /MSI-X table or PBA/);
  t.throws(() => device.readRegion(0, 0x1ffc, Buffer.alloc(8)), { instanceOf: UpciError, message: /MSI-X/ });
  reachesKernel(t, () => device.readRegion(0, 0x1ffc, Buffer.alloc(4)), 'PERMISSION');
  reachesKernel(t, () => device.readRegion(0, 0x2030, Buffer.alloc(4)), 'PERMISSION');
  t.is((t.throws(() => device.readRegion(2, 0, Buffer.alloc(4)), { instanceOf: UpciError }) as UpciError).code, 'NO_SUCH_REGION');
});
