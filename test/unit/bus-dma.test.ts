import test from 'ava';
import { fakeDevice, openFake } from '../support/fake-device.js';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DmaAccess, DmaConstraints, DmaDomain, DmaMapping, KernelPort, MmapSource } from '../../kernel/port.js';
import { SyscallError } from '../../kernel/errors.js';
import { ManagedIommuDomain, type IommuDmaDomain } from '../../kernel/linux/iommu-dma.js';
import { describeRanges, IovaAllocator, type IovaRange } from '../../kernel/linux/iova-allocator.js';
import { NetbsdDma } from '../../kernel/netbsd/pciuser.js';
import { parsePciAddress } from '../../kernel/pci-address.js';
import { BusDma, DmaConstraintError, DmaSync, type DmaSegment } from '../../pci/bus-dma.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../pci/config.js';
import { PciDevice } from '../../pci/device.js';
import { addressOf, allocShared } from '../../shm/mapping.js';

/** VFIO type1's refusals, as the real port reports them (a SyscallError with the errno). */
const EINVAL = 22;
const ENOSPC = 28;
const EFAULT = 14;
const ENOMEM = 12;

/** Whether [vaddr, vaddr+size) lies inside one mapping of this process (what pinning needs). */
function mappedInProcess(vaddr: bigint, size: number): boolean {
  const end = vaddr + BigInt(size);
  return readFileSync('/proc/self/maps', 'utf8').split('\n').some((line) => {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    return m !== null && BigInt(`0x${m[1]}`) <= vaddr && end <= BigInt(`0x${m[2]}`);
  });
}

/**
 * An IOMMU domain (a VFIO container) that records mappings and refuses what
 * VFIO type1 refuses: size 0 or unaligned (EINVAL), an overlap (EEXIST in
 * the kernel; refused here), no entries left (ENOSPC at dma_entry_limit), a
 * vaddr it cannot pin (EFAULT), more pinned bytes than RLIMIT_MEMLOCK
 * (ENOMEM), an unmap range that cuts a mapping (EINVAL).
 */
class FakeDomain implements IommuDmaDomain {
  readonly pageSizes = 0x40201000n; // 4K | 2M | 1G
  readonly mappings = new Map<bigint, { vaddr: bigint; size: number; access: DmaAccess }>();
  calls = 0;
  /** Bytes pinned now. */
  pinned = 0;
  constructor(
    readonly iovaRanges: readonly IovaRange[] = [{ start: 0n, end: (1n << 39n) - 1n }],
    /** dma_entry_limit */
    readonly entryLimit = 65535,
    /** RLIMIT_MEMLOCK in bytes */
    readonly memlockLimit = 1 << 30,
  ) {}
  availableMappings(): number {
    return this.entryLimit - this.mappings.size;
  }
  map(vaddr: bigint, iova: bigint, size: number, access: DmaAccess): void {
    this.calls++;
    const op = `VFIO_IOMMU_MAP_DMA iova 0x${iova.toString(16)} size ${size}`;
    if (size === 0 || vaddr % 4096n !== 0n || iova % 4096n !== 0n || size % 4096 !== 0) throw new SyscallError(op, EINVAL);
    if (!['read', 'write', 'both'].includes(access)) throw new SyscallError(op, EINVAL);
    for (const [at, m] of this.mappings) {
      if (iova < at + BigInt(m.size) && at < iova + BigInt(size)) throw new Error(`overlapping map at 0x${iova.toString(16)}`);
    }
    if (!this.iovaRanges.some((r) => iova >= r.start && iova + BigInt(size) - 1n <= r.end)) throw new SyscallError(op, EINVAL);
    if (this.mappings.size >= this.entryLimit) throw new SyscallError(op, ENOSPC);
    if (!mappedInProcess(vaddr, size)) throw new SyscallError(op, EFAULT);
    if (this.pinned + size > this.memlockLimit) throw new SyscallError(op, ENOMEM);
    this.pinned += size;
    this.mappings.set(iova, { vaddr, size, access });
  }
  /** VFIO type1v2's range unmap: every mapping inside goes, a range end that cuts one is EINVAL, nothing mapped removes 0 bytes. */
  unmap(iova: bigint, size: bigint): bigint {
    this.calls++;
    const op = `VFIO_IOMMU_UNMAP_DMA iova 0x${iova.toString(16)} size 0x${size.toString(16)}`;
    if (size === 0n || iova % 4096n !== 0n || size % 4096n !== 0n) throw new SyscallError(op, EINVAL);
    const end = iova + size;
    const inside = [...this.mappings].filter(([at]) => iova <= at && at < end);
    const cut = [...this.mappings].some(([at, m]) => (at < iova && iova < at + BigInt(m.size)) || (at < end && end < at + BigInt(m.size)));
    if (cut) throw new SyscallError(op, EINVAL);
    let removed = 0n;
    for (const [at, m] of inside) {
      removed += BigInt(m.size);
      this.pinned -= m.size;
      this.mappings.delete(at);
    }
    return removed;
  }
}

/** A device whose DMA domain is `domain` with its IOVAs managed by `managed` (shared by the devices of one group). */
function fakeDmaDevice(domain: FakeDomain = new FakeDomain(), managed = new ManagedIommuDomain(domain)): { device: PciDevice; domain: FakeDomain; iova: IovaAllocator; config: Buffer } {
  const fake = fakeDevice('0000:00:04.0', {}, { dma: managed });
  return { device: openFake(fake), domain, iova: managed.iova, config: fake.config };
}

const constraint = (name: string) => (e: unknown) => e instanceof DmaConstraintError && e.constraint === name;

function throwsConstraint(t: { true: (v: boolean, m?: string) => void; fail: (m: string) => void }, name: string, fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    t.true(constraint(name)(e), `expected a '${name}' DmaConstraintError, got ${(e as Error).message}`);
    t.true((e as DmaConstraintError).code === 'OUT_OF_RANGE');
    return;
  }
  t.fail(`expected a '${name}' DmaConstraintError, nothing thrown`);
}

const within = (s: DmaSegment, boundary: bigint) => s.busAddress / boundary === (s.busAddress + BigInt(s.length) - 1n) / boundary;

test('iova allocator: next fit, alignment, limit, boundary, guard page, never IOVA 0, honours the ranges', (t) => {
  const a = new IovaAllocator([{ start: 0n, end: 0xfedfffffn }, { start: 0xfef00000n, end: (1n << 39n) - 1n }], 4096n);
  const x = a.allocate({ size: 4096n, alignment: 1n, limit: 1n << 64n, boundary: 0n });
  t.is(x, 4096n);
  const y = a.allocate({ size: 8192n, alignment: 1n, limit: 1n << 64n, boundary: 0n });
  t.is(y, 3n * 4096n); // one guard page after x
  const z = a.allocate({ size: 4096n, alignment: 0x10000n, limit: 1n << 64n, boundary: 0n });
  t.is(z, 0x10000n);
  const w = a.allocate({ size: 0x3000n, alignment: 1n, limit: 1n << 64n, boundary: 0x4000n });
  t.is(w / 0x4000n, (w + 0x2fffn) / 0x4000n);
  t.throws(() => a.allocate({ size: 0x100000n, alignment: 1n, limit: 0xfffffn, boundary: 0n }), { code: 'OUT_OF_RANGE' } as never);
  a.release(x);
  // Quarantined: not handed out again at once.
  t.true(a.isQuarantined(x));
  t.not(a.allocate({ size: 4096n, alignment: 1n, limit: 1n << 64n, boundary: 0n }), 4096n);
  t.throws(() => a.release(x), { code: 'KERNEL', message: /double free/ } as never);
  // A range that skips the hole: a 2 MiB request below 0xff000000 cannot straddle 0xfee00000-0xfeefffff.
  const b = new IovaAllocator([{ start: 0xfed00000n, end: 0xfedfffffn }, { start: 0xfef00000n, end: 0xffffffffn }], 4096n);
  t.is(b.allocate({ size: 0x200000n, alignment: 1n, limit: 1n << 64n, boundary: 0n }), 0xfef00000n);
  t.throws(() => b.release(0x1234000n), { code: 'KERNEL' } as never);
});

test('DMA memory is a page-aligned SharedArrayBuffer mapped in the IOMMU under the tag, unmapped and revoked by free()', (t) => {
  const { device, domain } = fakeDmaDevice();
  const dma = BusDma.forDevice(device);
  t.is(BusDma.forDevice(device), dma);
  const tag = dma.createTag({ alignment: 0x10000, addressLimit: (1n << 28n) - 1n });
  const mem = tag.allocMemory(5000);
  t.true(mem.buffer instanceof SharedArrayBuffer);
  t.is(mem.size, 8192);
  t.is(addressOf(mem.buffer) % 4096n, 0n);
  t.is(domain.mappings.size, 1);
  const [iova, m] = [...domain.mappings][0]!;
  t.is(m.vaddr, addressOf(mem.buffer));
  t.is(iova % 0x10000n, 0n);
  t.true(iova + 8192n - 1n < 1n << 28n);
  const view = new Uint8Array(mem.buffer);
  view[0] = 42;
  mem.free();
  t.is(domain.mappings.size, 0);
  t.is(view[0], 0xff, 'a stale view sees revoked memory, not the freed pages');
  t.throws(() => mem.buffer, { code: 'RELEASED' } as never);
  t.throws(() => mem.free(), { code: 'RELEASED' } as never);
  device.close();
});

test('tag constraints: alignment, boundary splits, max segment size, max segments, address window', (t) => {
  const { device } = fakeDmaDevice();
  const dma = BusDma.forDevice(device);

  // Boundary: a 12 KiB load crossing 8 KiB multiples is cut at each one.
  const b = dma.createTag({ boundary: 0x2000 });
  const buf = allocShared(0x10000);
  const l1 = b.createMap(0x10000).load(buf, 0x1000, 0x3000);
  t.true(l1.segments.length >= 2);
  t.true(l1.segments.every((s) => within(s, 0x2000n)));
  t.is(l1.segments.reduce((n, s) => n + s.length, 0), 0x3000);
  for (let i = 1; i < l1.segments.length; i++) t.is(l1.segments[i]!.busAddress, l1.segments[i - 1]!.busAddress + BigInt(l1.segments[i - 1]!.length));
  l1.unload();

  // Max segment size: 10000 bytes in segments of at most 4096, each 512-aligned.
  const s = dma.createTag({ maxSegmentSize: 4096, alignment: 512 });
  const mem = s.allocMemory(10000);
  const l2 = s.createMap().load(mem, 0, 10000);
  t.deepEqual(l2.segments.map((x) => x.length), [4096, 4096, 1808]);
  t.true(l2.segments.every((x) => x.busAddress % 512n === 0n));
  // Alignment: an offset that cannot give an aligned bus address is refused.
  l2.unload();
  throwsConstraint(t, 'alignment', () => s.createMap().load(mem, 100, 512));
  throwsConstraint(t, 'alignment', () => s.createMap().load(buf, 100, 512));
  t.is(s.createMap().load(mem, 1024, 512).segments[0]!.busAddress % 512n, 0n);

  // Max segments: 3 pages with 4 KiB segments do not fit in 2.
  const two = dma.createTag({ maxSegmentSize: 4096, maxSegments: 2 });
  throwsConstraint(t, 'maxSegments', () => two.allocMemory(3 * 4096));
  throwsConstraint(t, 'maxSegments', () => two.createMap().load(buf, 0, 3 * 4096));
  t.is(two.createMap().load(buf, 0, 2 * 4096).segments.length, 2);

  // Address window: memory from a wide tag loaded through a 28-bit map is refused, not truncated.
  const narrow = dma.createTag({ addressLimit: (1n << 28n) - 1n });
  const wide = dma.createTag({ alignment: 1 << 28 }); // forces an IOVA >= 2^28
  const high = wide.allocMemory(4096);
  throwsConstraint(t, 'addressLimit', () => narrow.createMap().load(high));
  const low = narrow.allocMemory(4096);
  t.true(narrow.createMap().load(low).segments.every((x) => x.busAddress + BigInt(x.length) <= 1n << 28n));

  // Bad tags and sizes.
  throwsConstraint(t, 'alignment', () => dma.createTag({ alignment: 3 }));
  throwsConstraint(t, 'boundary', () => dma.createTag({ alignment: 4096, boundary: 2048 }));
  throwsConstraint(t, 'maxSegmentSize', () => dma.createTag({ alignment: 4096, maxSegmentSize: 100 }));
  throwsConstraint(t, 'maxSize', () => dma.createTag({ maxSize: 4096 }).allocMemory(8192));
  throwsConstraint(t, 'range', () => narrow.createMap().load(low, 4000, 200));
  device.close();
});

test('a tag whose window holds no valid IOVA is refused; an exhausted window is refused, not truncated', (t) => {
  const { device } = fakeDmaDevice(new FakeDomain([{ start: 0x100000n, end: 0x10ffffn }]));
  const dma = BusDma.forDevice(device);
  throwsConstraint(t, 'addressLimit', () => dma.createTag({ addressLimit: 0xfffffn }));
  const tag = dma.createTag({ addressLimit: 0x10ffffn });
  const mems = [];
  for (let i = 0; i < 8; i++) mems.push(tag.allocMemory(4096)); // 8 pages + 8 guards = 64 KiB
  t.throws(() => tag.allocMemory(4096), { code: 'OUT_OF_RANGE', message: /no free IOVA range/ } as never);
  for (const m of mems) m.free();
  t.truthy(tag.allocMemory(4096));
  device.close();
});

test('a SharedArrayBuffer is pinned at load and unpinned at unload; unaligned buffers are refused', (t) => {
  const { device, domain } = fakeDmaDevice();
  const dma = BusDma.forDevice(device);
  const tag = dma.createTag();
  const buf = allocShared(3 * 4096);
  const map = tag.createMap();
  const loaded = map.load(buf, 4096 + 16, 100);
  t.is(domain.mappings.size, 1);
  const [iova, m] = [...domain.mappings][0]!;
  t.is(m.vaddr, addressOf(buf) + 4096n);
  t.is(m.size, 4096);
  t.deepEqual(loaded.segments, [{ busAddress: iova + 16n, length: 100 }]);
  t.throws(() => map.load(buf), { code: 'BUSY' } as never);
  t.is(map.loaded, loaded);
  loaded.sync(DmaSync.PREWRITE | DmaSync.PREREAD);
  t.throws(() => loaded.sync(0x10), { code: 'OUT_OF_RANGE' } as never);
  t.is(loaded.unload(), map);
  t.is(map.loaded, undefined);
  t.is(domain.mappings.size, 0);
  t.throws(() => loaded.segments, { code: 'RELEASED' } as never);
  t.throws(() => loaded.sync(DmaSync.POSTREAD), { code: 'RELEASED' } as never);
  // A partial last page would map memory beyond the buffer.
  throwsConstraint(t, 'pageAlignment', () => map.load(new SharedArrayBuffer(100)));
  t.is(domain.mappings.size, 0);
  device.close();
});

test('per-map lifetime: unload and free are legal while bus mastering is on; the IOMMU mapping goes before the pages, and the IOVA is quarantined', (t) => {
  const { device, domain, iova } = fakeDmaDevice();
  const dma = BusDma.forDevice(device);
  const tag = dma.createTag();
  const mem = tag.allocMemory(4096);
  const loaded = tag.createMap().load(mem);
  t.throws(() => mem.free(), { code: 'BUSY', message: /1 map\(s\) still have loaded/ } as never);
  const sab = tag.createMap().load(allocShared(4096));
  const sabIova = BigInt(sab.busAddress(0));
  dma.enableBusMaster();
  const view = new Uint8Array(mem.buffer);
  // The pages must still be the device's until the kernel dropped the mapping: check at unmap time.
  let revokedBeforeUnmap: boolean | undefined;
  const unmap = domain.unmap.bind(domain);
  domain.unmap = (iova, size) => {
    view[0] = 0x11;
    revokedBeforeUnmap = view[0] !== 0x11;
    return unmap(iova, size);
  };
  sab.unload();
  loaded.unload();
  mem.free();
  t.false(revokedBeforeUnmap, 'the pages were still live when the IOMMU mapping was removed');
  t.is(view[0], 0xff, 'and revoked after');
  t.true(dma.busMasterEnabled, 'unloading did not stop the device');
  t.is(domain.mappings.size, 0);
  t.true(iova.isQuarantined(sabIova));
  // The next loads get fresh IOVAs, never the one a device may still hold.
  for (let i = 0; i < 100; i++) {
    const again = tag.createMap().load(allocShared(4096));
    t.not(BigInt(again.busAddress(0)), sabIova);
    again.unload();
  }
  device.close();
});

test('quarantine: a full IOVA window takes back the oldest quarantined range rather than failing', (t) => {
  const { device } = fakeDmaDevice(new FakeDomain([{ start: 0x100000n, end: 0x10ffffn }]));
  const tag = BusDma.forDevice(device).createTag({ addressLimit: 0x10ffffn });
  const seen = new Set<number>();
  // 8 pages + guards fill the window; 20 rounds of alloc/free must keep working.
  for (let i = 0; i < 20; i++) {
    const mems = Array.from({ length: 8 }, () => tag.allocMemory(4096));
    for (const m of mems) {
      const l = tag.createMap().load(m);
      seen.add(l.busAddress(0));
      l.unload();
      m.free();
    }
  }
  t.is(seen.size, 8);
  device.close();
});

test('the fake IOMMU refuses as VFIO type1 does: ENOSPC at the entry limit, EFAULT for a bad vaddr, ENOMEM over RLIMIT_MEMLOCK, EINVAL for size 0; the access mode reaches the kernel', (t) => {
  const errno = (n: number) => (e: unknown) => e instanceof SyscallError && e.errno === n;
  const limited = fakeDmaDevice(new FakeDomain(undefined, 2));
  const tag = BusDma.forDevice(limited.device).createTag();
  tag.allocMemory(4096);
  tag.allocMemory(4096);
  const full = t.throws(() => tag.allocMemory(4096));
  t.true(errno(ENOSPC)(full), full?.message);
  t.is(limited.iova.allocations, 2, 'the refused allocation gave its IOVA back');
  limited.device.close();

  const small = fakeDmaDevice(new FakeDomain(undefined, 65535, 8192));
  const smallTag = BusDma.forDevice(small.device).createTag();
  smallTag.allocMemory(8192);
  const over = t.throws(() => smallTag.createMap().load(allocShared(4096)));
  t.true(errno(ENOMEM)(over), over?.message);
  small.device.close();

  const { device, domain } = fakeDmaDevice();
  t.true(errno(EFAULT)(t.throws(() => domain.map(0x1000n, 0x10000n, 4096, 'both'))));
  t.true(errno(EINVAL)(t.throws(() => domain.map(addressOf(allocShared(4096)), 0x10000n, 0, 'both'))));
  const dtag = BusDma.forDevice(device).createTag();
  const toDevice = dtag.allocMemory(4096, { access: 'read' });
  const fromDevice = dtag.createMap().load(allocShared(4096), 0, 4096, { access: 'write' });
  const accessAt = (bus: number) => domain.mappings.get(BigInt(bus))?.access;
  t.is(accessAt(dtag.createMap().load(toDevice).busAddress(0)), 'read');
  t.is(accessAt(fromDevice.busAddress(0)), 'write');
  t.is(accessAt(dtag.createMap().load(dtag.allocMemory(4096)).busAddress(0)), 'both');
  device.close();
});

test('DMA pool: one mapping, entries with precomputed bus addresses under the tag, a free stack, refused double release', (t) => {
  const { device, domain } = fakeDmaDevice();
  const dma = BusDma.forDevice(device);
  const tag = dma.createTag({ alignment: 512, boundary: 0x10000, addressLimit: (1n << 32n) - 1n });
  const before = domain.mappings.size;
  const pool = tag.createPool({ entrySize: 500, entries: 300 });
  t.is(domain.mappings.size, before + 1, 'one kernel mapping for the whole pool');
  t.is(pool.stride, 512);
  const [iova] = [...domain.mappings.keys()];
  for (let i = 0; i < pool.entries; i++) {
    t.is(pool.busAddresses[i], Number(iova) + i * 512);
    t.is(pool.busAddresses[i]! % 512, 0);
  }
  const got = new Set<number>();
  for (let i = 0; i < 300; i++) got.add(pool.alloc());
  t.is(got.size, 300);
  t.is(pool.alloc(), -1, 'an empty pool says so');
  pool.release(7);
  t.throws(() => pool.release(7), { code: 'OUT_OF_RANGE', message: /not handed out/ } as never);
  t.throws(() => pool.release(300), { code: 'OUT_OF_RANGE' } as never);
  t.is(pool.alloc(), 7);
  new Uint8Array(pool.buffer, pool.offsetOf(3), pool.entrySize).fill(9);
  pool.sync(DmaSync.PREWRITE, 3);
  t.throws(() => pool.sync(DmaSync.PREWRITE, 3, 0, 10_000), { code: 'OUT_OF_RANGE' } as never);
  throwsConstraint(t, 'boundary', () => tag.createPool({ entrySize: 3 * 512, entries: 4 }));
  throwsConstraint(t, 'range', () => tag.createPool({ entrySize: 0, entries: 4 }));
  pool.free();
  t.is(domain.mappings.size, before);
  t.true(pool.freed);
  device.close();
});

test('close: bus mastering off, then every map unloaded and all memory freed; the API is dead afterwards', (t) => {
  const { device, domain, config } = fakeDmaDevice();
  const dma = BusDma.forDevice(device);
  const tag = dma.createTag();
  const mems = [tag.allocMemory(4096), tag.allocMemory(8192)];
  const loads = [tag.createMap().load(mems[0]!), tag.createMap().load(allocShared(4096))];
  dma.enableBusMaster();
  t.is(domain.mappings.size, 3);
  t.is(dma.mappingCount, 3);
  device.close();
  t.is(config.readUInt16LE(PCI_COMMAND) & PCI_COMMAND_MASTER, 0);
  t.is(domain.mappings.size, 0);
  t.true(mems.every((m) => m.freed));
  t.true(loads.every((l) => !l.isLoaded));
  t.throws(() => tag.allocMemory(4096), { code: 'RELEASED' } as never);
  t.throws(() => tag.createMap(), { code: 'RELEASED' } as never);
});

test('one IOVA allocator per DmaDomain: two devices of one group never get the same IOVA', (t) => {
  const domain = new FakeDomain();
  const group = new ManagedIommuDomain(domain);
  const a = fakeDmaDevice(domain, group);
  const b = fakeDmaDevice(domain, group);
  const ma = BusDma.forDevice(a.device).createTag().allocMemory(4096);
  const mb = BusDma.forDevice(b.device).createTag().allocMemory(4096);
  t.is(domain.mappings.size, 2); // FakeDomain.map throws on overlap
  t.throws(() => BusDma.forDevice(b.device).createTag().createMap().load(ma), { message: /another device/ });
  a.device.close();
  t.false(mb.freed);
  b.device.close();
  t.is(domain.mappings.size, 0);
});

/**
 * Two devices of one IOMMU group (one container, `domain`) opened in this
 * thread, as the host opens them, with ports that can share them: adopt()
 * builds the adopting thread's domain over the window it was handed, as
 * VfioPort.adopt does. The adopting "threads" are PciDevices adopted here.
 */
function sharedGroup(): { domain: FakeDomain; group: ManagedIommuDomain; open(address: string): { device: PciDevice; port: KernelPort } } {
  const domain = new FakeDomain();
  const group = new ManagedIommuDomain(domain);
  return {
    domain,
    group,
    open(address) {
      const fake = fakeDevice(address, {}, { dma: group, handles: { port: 'fake', address: parsePciAddress(address), fds: {} } });
      const port: KernelPort = {
        name: 'fake',
        open: () => fake.file,
        adopt: (handles) => fakeDevice(address, {}, { dma: new ManagedIommuDomain(domain, handles.dmaWindow) }, fake.config).file,
      };
      return { device: PciDevice.open(address, { port }), port };
    },
  };
}

/** Bus addresses of memory allocated in `device`'s domain: 28-bit and 64-bit tags, interleaved. */
function allocateBoth(device: PciDevice, count: number): bigint[] {
  const dma = BusDma.forDevice(device);
  const wide = dma.createTag();
  const narrow = dma.createTag({ addressLimit: (1n << 28n) - 1n });
  return Array.from({ length: count }, (_, i) => {
    const tag = i % 2 === 0 ? wide : narrow;
    return BigInt(tag.createMap().load(tag.allocMemory(4096 * (1 + (i % 3)))).busAddress(0));
  });
}

const inside = (address: bigint, ranges: readonly IovaRange[]) => ranges.some((r) => r.start <= address && address <= r.end);

test('one container shared with two driver threads: disjoint windows, each thread allocates only inside its own, the opener outside both', (t) => {
  const { domain, open } = sharedGroup();
  const a = open('0000:00:04.0');
  const b = open('0000:00:05.0');
  const shares = [a.device.share()!, b.device.share()!];
  const windows = shares.map((s) => s.handles.dmaWindow!);
  const ranges = windows.flat();
  ranges.forEach((x, i) => ranges.slice(i + 1).forEach((y) => t.true(x.end < y.start || y.end < x.start, `windows ${describeRanges([x])} and ${describeRanges([y])} overlap`)));
  const threads = [PciDevice.adopt(shares[0]!, { port: a.port }), PciDevice.adopt(shares[1]!, { port: b.port })];
  // FakeDomain.map refuses a mapping that overlaps another: one IOVA handed out twice throws here.
  const addresses = [allocateBoth(threads[0]!, 40), allocateBoth(threads[1]!, 40)];
  const opener = allocateBoth(a.device, 40);
  t.is(domain.mappings.size, 120);
  addresses.forEach((list, i) => t.true(list.every((address) => inside(address, windows[i]!)), `thread ${i} allocated outside its window`));
  t.true(opener.every((address) => !inside(address, ranges)), 'the opener allocated inside a window');
  // The 28-bit tag's memory is below 2^28 in every window: each has a part there.
  t.true(addresses.every((list) => list.filter((_, i) => i % 2 === 1).every((address) => address < 1n << 28n)));
  for (const device of [...threads, a.device, b.device]) device.close();
  t.is(domain.mappings.size, 0);
});

test('taking DMA back from one driver thread unmaps exactly its window; the window goes to quarantine, then back to the opener\'s space', (t) => {
  const { domain, group, open } = sharedGroup();
  const a = open('0000:00:04.0');
  const b = open('0000:00:05.0');
  const sa = a.device.share()!;
  const sb = b.device.share()!;
  const ta = PciDevice.adopt(sa, { port: a.port });
  const tb = PciDevice.adopt(sb, { port: b.port });
  allocateBoth(ta, 10);
  const kept = [...allocateBoth(tb, 10), ...allocateBoth(b.device, 10)];
  t.is(domain.mappings.size, 30);
  // What DriverThread's take-back does while thread a may still run: its window's mappings go, nobody else's.
  a.device.unmapSharedDma(sa);
  t.is(domain.mappings.size, 20);
  t.true(kept.every((address) => domain.mappings.has(address)), 'another device\'s mappings were unmapped');
  // A map thread a makes during the take-back, before it is terminated, goes at endShare.
  allocateBoth(ta, 2);
  t.is(domain.mappings.size, 22);
  a.device.endShare(sa);
  t.is(domain.mappings.size, 20);
  const window = sa.handles.dmaWindow!;
  t.true(window.every((r) => group.iova.isQuarantined(r.start)), 'the window skipped quarantine');
  const next = a.device.share()!;
  t.true(next.handles.dmaWindow!.every((r) => !inside(r.start, window) && !inside(r.end, window)), 'a quarantined window was handed out again');
  a.device.endShare(next);
  a.device.endShare(sa); // idempotent
  // Thread a is gone (terminated, never closed); b closes its device as a driver thread does on a clean stop.
  tb.close();
  b.device.close();
  a.device.close();
  t.is(domain.mappings.size, 0);
  t.is(group.iova.allocations, 0);
});

test('a driver thread\'s DMA window is refused when it lies outside the IOMMU\'s ranges; its errors name the window', (t) => {
  const domain = new FakeDomain([{ start: 0n, end: 0xffffffffn }]);
  t.throws(() => new ManagedIommuDomain(domain, [{ start: 1n << 32n, end: (1n << 33n) - 1n }]), { code: 'KERNEL', message: /outside the IOMMU's valid IOVA ranges/ } as never);
  // No IOVA above 4 GiB: no room for a window's upper part.
  t.throws(() => new ManagedIommuDomain(domain).reserveWindow(), { code: 'OUT_OF_RANGE', message: /no room for a driver thread's DMA window/ } as never);
  const adopted = new ManagedIommuDomain(new FakeDomain(), [{ start: 1n << 32n, end: (1n << 33n) - 1n }]);
  t.regex(adopted.unreachable((1n << 32n) - 1n) ?? '', /this thread's DMA window \[0x100000000-0x1ffffffff\]/);
});

test('1,000 alloc/load/unload/free cycles leave no mapping and no IOVA behind', (t) => {
  const { device, domain, iova } = fakeDmaDevice();
  const dma = BusDma.forDevice(device);
  const tag = dma.createTag({ addressLimit: (1n << 28n) - 1n, boundary: 0x10000 });
  const buf = allocShared(4096);
  for (let i = 0; i < 1000; i++) {
    const mem = tag.allocMemory(4096 * (1 + (i % 3)));
    const map = tag.createMap();
    map.load(mem).unload();
    map.load(buf).unload();
    map.destroy();
    mem.free();
  }
  t.is(domain.mappings.size, 0);
  t.is(iova.allocations, 0);
  device.close();
});

/**
 * A kernel that allocates DMA memory itself (pciuser(4)): mmap by cookie (a
 * temp file here), bus segments returned; process memory refused as the
 * NetBSD port refuses it.
 */
class FakeKernelDma implements DmaDomain {
  readonly pageSize = 4096;
  readonly live = new Map<DmaMapping, number>();
  readonly syncs: [number, number, number][] = [];
  readonly asked: DmaConstraints[] = [];
  private next = 0x100000n;
  segmentsPerAllocation = 1;
  private readonly pciuser = new NetbsdDma(-1, parsePciAddress('0000:00:04.0'), () => {});
  availableMappings(): undefined {
    return undefined;
  }
  unreachable(): undefined {
    return undefined;
  }
  allocate(size: number, constraints: DmaConstraints): DmaMapping & { mmap: MmapSource } {
    this.asked.push(constraints);
    const path = join(mkdtempSync(join(tmpdir(), 'upci-dma-')), 'mem');
    const fd = openSync(path, 'w+');
    ftruncateSync(fd, size);
    const a = constraints.alignment > 4096n ? constraints.alignment : 4096n;
    const bus = ((this.next + a - 1n) / a) * a;
    this.next = bus + BigInt(size) + 4096n;
    const half = size / 2;
    const segments = this.segmentsPerAllocation === 1 ? [{ busAddress: bus, length: size }] : [{ busAddress: bus, length: half }, { busAddress: bus + 0x1000000n, length: half }];
    const allocation = { size, mmap: { fd, fileOffset: 0, size, writable: true }, segments };
    this.live.set(allocation, fd);
    return allocation;
  }
  map(): never {
    return this.pciuser.map();
  }
  reserveWindow(): never {
    return this.pciuser.reserveWindow();
  }
  sync(_allocation: DmaMapping, ops: number, offset: number, length: number): void {
    this.syncs.push([ops, offset, length]);
  }
  unmap(allocation: DmaMapping): void {
    closeSync(this.live.get(allocation)!);
    this.live.delete(allocation);
  }
}

test('the kernel DMA model: memory the kernel allocated is mmapped and loaded under the tag; process memory is refused', (t) => {
  const kernel = new FakeKernelDma();
  const device = openFake(fakeDevice('0000:00:04.0', {}, { dma: kernel }));
  const dma = BusDma.forDevice(device);
  t.is(dma.granule, 4096);
  const tag = dma.createTag({ alignment: 0x1000, boundary: 0x10000, addressLimit: (1n << 32n) - 1n });
  const mem = tag.allocMemory(5000);
  t.is(mem.size, 8192);
  t.deepEqual(kernel.asked[0], { alignment: 0x1000n, boundary: 0x10000n, addressLimit: (1n << 32n) - 1n, maxSegments: 1 });
  new Uint8Array(mem.buffer)[4096] = 7; // the kernel's pages, through the mmap
  const loaded = tag.createMap().load(mem, 4096, 4096);
  const base = [...kernel.live.keys()][0]!.segments[0]!.busAddress;
  t.deepEqual(loaded.segments, [{ busAddress: base + 4096n, length: 4096 }]);
  loaded.sync(DmaSync.POSTREAD, 16, 32);
  t.deepEqual(kernel.syncs, [[DmaSync.POSTREAD, 4096 + 16, 32]]);
  t.throws(() => tag.createMap().load(allocShared(4096)), { code: 'KERNEL', message: /cannot make memory this process allocated visible/ } as never);
  // A kernel answer that is not one bus-contiguous range is refused, and the allocation given back.
  kernel.segmentsPerAllocation = 2;
  t.throws(() => tag.allocMemory(8192), { code: 'KERNEL', message: /2 segment/ } as never);
  t.is(kernel.live.size, 1);
  kernel.segmentsPerAllocation = 1;
  const view = new Uint8Array(tag.allocMemory(4096).buffer);
  t.is(dma.mappingCount, 2);
  device.close();
  t.is(kernel.live.size, 0, 'close freed every kernel allocation');
  t.is(view[0], 0xff, 'and revoked its mapping');
  t.true(mem.freed);
});
