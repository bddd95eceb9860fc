/**
 * The kernel port on NetBSD: pci(4)'s user driver extension, pciuser(4)
 * (kernel/netbsd/sys/dev/pci/pci_user.c, ABI in pciuser-abi.ts).
 *
 * NOT RUN: neither this file nor the kernel side has run on NetBSD. What is
 * tested on Linux: the ABI it speaks (test/unit/netbsd-abi.test.ts), and the
 * kernel's limits it checks before each ioctl plus what it makes of a claim
 * reply (test/unit/netbsd-limits.test.ts).
 *
 * pciuser(4) fits the KernelPort contract through its two non-VFIO shapes:
 *  - interrupts: the device file itself is the one IrqSource ('records',
 *    owned by the device) for all vectors (enableIrqs);
 *  - DMA: the kernel allocates the memory and picks its bus addresses
 *    (NetbsdDma): process memory cannot be made visible to the device.
 * What it really lacks is a reset ioctl: reset() throws, canReset is false.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { SyscallError, UpciError } from '../errors.js';
import { pciAddressParts, type PciAddress } from '../pci-address.js';
import type {
  DeviceFile, DmaAccess, DmaBusSegment, DmaConstraints, DmaDomain, DmaMapping, IrqInfo, IrqKind, IrqSource, KernelPort, MmapSource, RegionInfo, RegionKind,
} from '../port.js';
import * as abi from './pciuser-abi.js';
import { barMmapAreas, dmaRequest, PAGE_SIZE, syncRequest, touchesHole, type BarHole, type DmaRequest } from './pciuser-limits.js';
import { RegionDevice, RegionTable } from '../region-table.js';
import * as nb from './libc.js';

/** Region indexes as VFIO numbers them, so pci/device.ts is the same on both. */
const ROM_INDEX = 6;
const CONFIG_INDEX = 7;
const VGA_INDEX = 8;

const PCI_COMMAND_STATUS = 0x04;

const INTR_TYPE: Record<IrqKind, number> = {
  intx: abi.PCIUSER_INTR_INTX,
  msi: abi.PCIUSER_INTR_MSI,
  msix: abi.PCIUSER_INTR_MSIX,
};

function errnoOf(e: unknown): number | undefined {
  return e instanceof SyscallError ? e.errno : undefined;
}

function regionKind(index: number): RegionKind {
  if (index < ROM_INDEX) return 'bar';
  if (index === ROM_INDEX) return 'rom';
  if (index === CONFIG_INDEX) return 'config';
  return 'vga';
}

const absent = (index: number): RegionInfo => ({ index, kind: regionKind(index), size: 0, readable: false, writable: false, mmapAreas: [] });

/** A pciuser(4) dmamem (DMAMEM_ALLOC) kept loaded in one dmamap for its whole life: its bus addresses do not change. */
interface NetbsdAllocation extends DmaMapping {
  readonly mmap: MmapSource;
  readonly mem: number;
  readonly map: number;
}

/**
 * DMA through pciuser(4)'s bus_dma objects, the kernel's DmaDomain model
 * (kernel/port.ts). allocate() is bus_dmamem_alloc on the device's tag
 * (DMAMEM_ALLOC, mmapped by the process through its cookie) plus a dmamap
 * created and loaded over the whole memory (DMAMAP_CREATE + LOAD), whose
 * segments are the bus addresses; unmap() undoes the three. pci/bus-dma.ts
 * cuts loads of sub-ranges out of those segments itself, as it does for
 * VFIO memory. Process memory cannot be loaded (map() refuses).
 */
export class NetbsdDma implements DmaDomain {
  /** bus_dma's page: dmamem sizes are rounded up to it. */
  readonly pageSize = PAGE_SIZE;

  constructor(
    private readonly fd: number,
    private readonly address: PciAddress,
    private readonly live: () => void,
  ) {}

  /** pciuser(4) does not say. */
  availableMappings(): number | undefined {
    return undefined;
  }

  /** The kernel checks the device's window itself, at allocation time (pciuser-limits.ts applies its limits first). */
  unreachable(): undefined {
    return undefined;
  }

  /** The 64-bit tag when the device can address beyond 4 GiB (the kernel falls back to the 32-bit one without it). */
  private static flags(constraints: DmaConstraints): number {
    return constraints.addressLimit > 0xffffffffn ? abi.PCIUSER_DMA_64BIT : 0;
  }

  /**
   * The memory and its map are both charged against the kernel's DMA caps
   * (the map for the bounce buffer bus_dma may give it), so an allocation
   * holds twice its size of the caps.
   */
  allocate(size: number, constraints: DmaConstraints, access: DmaAccess): DmaMapping {
    this.live();
    const request = dmaRequest(size, constraints);
    const rounded = request.size;
    const t = abi.pciuserDmamemAlloc;
    const arg = t.encode({
      pdm_size: BigInt(size),
      pdm_align: request.alignment,
      pdm_boundary: request.boundary,
      pdm_maxaddr: request.maxaddr,
      pdm_maxsegs: request.maxSegments,
      pdm_flags: abi.PCIUSER_DMA_COHERENT | NetbsdDma.flags(constraints),
    });
    dmaIoctl(this.fd, abi.ioctls.PCIUSER_IOC_DMAMEM_ALLOC, arg, `PCIUSER_IOC_DMAMEM_ALLOC ${size} bytes`);
    const mem = t.get(arg, 'pdm_id');
    try {
      const { map, segments } = this.load(mem, request, constraints, access);
      const allocation: NetbsdAllocation = {
        size: rounded,
        mmap: { fd: this.fd, fileOffset: Number(t.get(arg, 'pdm_cookie')), size: rounded, writable: true },
        segments,
        mem,
        map,
      };
      return allocation;
    } catch (e) {
      this.freeMem(mem);
      throw e;
    }
  }

  /**
   * A dmamap over all of `mem`, loaded: the segments are what the device is
   * told. `access` is the device's: 'read' means the device only reads the
   * memory, which bus_dma calls a write (BUS_DMA_WRITE).
   */
  private load(mem: number, request: DmaRequest, constraints: DmaConstraints, access: DmaAccess): { map: number; segments: DmaBusSegment[] } {
    const { size: length, maxSegments } = request;
    const create = abi.pciuserDmamapCreate.encode({
      pdc_maxsize: BigInt(length),
      pdc_maxsegsz: BigInt(length),
      pdc_boundary: request.boundary,
      pdc_maxaddr: request.maxaddr,
      pdc_nsegments: maxSegments,
      pdc_flags: NetbsdDma.flags(constraints),
    });
    dmaIoctl(this.fd, abi.ioctls.PCIUSER_IOC_DMAMAP_CREATE, create, `PCIUSER_IOC_DMAMAP_CREATE ${length} bytes`);
    const map = abi.pciuserDmamapCreate.get(create, 'pdc_id');
    try {
      // The kernel copies the segments out to this buffer's address; it holds all the map can have, as the kernel requires.
      const segs = Buffer.alloc(maxSegments * abi.pciuserDmaSeg.size);
      const t = abi.pciuserDmamapLoad;
      const arg = t.encode({
        pdl_map: map,
        pdl_mem: mem,
        pdl_offset: 0n,
        pdl_len: BigInt(length),
        pdl_segs: nb.address(segs),
        pdl_maxsegs: maxSegments,
        pdl_flags: access === 'read' ? abi.PCIUSER_LOAD_WRITE : access === 'write' ? abi.PCIUSER_LOAD_READ : 0,
      });
      nb.ioctlBuffer(this.fd, abi.ioctls.PCIUSER_IOC_DMAMAP_LOAD, arg, `PCIUSER_IOC_DMAMAP_LOAD mem ${mem} ${length} bytes`);
      const segments: DmaBusSegment[] = [];
      for (let i = 0; i < t.get(arg, 'pdl_nsegs'); i++) {
        const at = i * abi.pciuserDmaSeg.size;
        segments.push({ busAddress: abi.pciuserDmaSeg.get(segs, 'ds_addr', at), length: Number(abi.pciuserDmaSeg.get(segs, 'ds_len', at)) });
      }
      return { map, segments };
    } catch (e) {
      this.destroy(map);
      throw e;
    }
  }

  /** pciuser(4) loads only memory the kernel allocated: a process's own pages cannot be made visible to the device. */
  map(): never {
    throw new UpciError(
      'KERNEL',
      `bus_dma: ${this.address}'s kernel port allocates DMA memory itself and cannot make memory this process allocated visible to the device`,
      'allocate the buffer with tag.allocMemory() and use its .buffer',
    );
  }

  /**
   * The kernel picks the bus addresses, so there is no space to set aside;
   * nor is there a device to share (the port has no adopt): a file's DMA
   * objects go when the file closes (DESIGN.md, teardown order).
   */
  reserveWindow(): never {
    throw new UpciError('KERNEL', `${this.address}: pciuser(4) picks bus addresses itself and cannot set a window of them aside for another thread`, 'run the driver in the main thread (its module\'s thread: \'main\')');
  }

  /** bus_dmamap_sync; DmaSync's values are BUS_DMASYNC_*'s, which PCIUSER_SYNC_* repeat. */
  sync(allocation: DmaMapping, ops: number, offset: number, length: number): void {
    this.live();
    syncRequest(ops, offset, length);
    const { map } = allocation as NetbsdAllocation;
    const arg = abi.pciuserDmamapSync.encode({ pds_map: map, pds_ops: ops, pds_offset: BigInt(offset), pds_len: BigInt(length) });
    nb.ioctlBuffer(this.fd, abi.ioctls.PCIUSER_IOC_DMAMAP_SYNC, arg, `PCIUSER_IOC_DMAMAP_SYNC map ${map}`);
  }

  /** Unloads and destroys the map (the device can no longer reach the memory), then drops the file's reference on the memory. */
  unmap(allocation: DmaMapping): void {
    this.live();
    const { map, mem } = allocation as NetbsdAllocation;
    try {
      nb.ioctlBuffer(this.fd, abi.ioctls.PCIUSER_IOC_DMAMAP_UNLOAD, abi.pciuserDmaId.encode({ pdi_id: map }), `PCIUSER_IOC_DMAMAP_UNLOAD ${map}`);
      this.destroy(map);
    } finally {
      this.freeMem(mem);
    }
  }

  /** The pages live on until the last mapping of them goes. Refused (EBUSY) while loaded. */
  private freeMem(mem: number): void {
    nb.ioctlBuffer(this.fd, abi.ioctls.PCIUSER_IOC_DMAMEM_FREE, abi.pciuserDmaId.encode({ pdi_id: mem }), `PCIUSER_IOC_DMAMEM_FREE ${mem}`);
  }

  private destroy(map: number): void {
    nb.ioctlBuffer(this.fd, abi.ioctls.PCIUSER_IOC_DMAMAP_DESTROY, abi.pciuserDmaId.encode({ pdi_id: map }), `PCIUSER_IOC_DMAMAP_DESTROY ${map}`);
  }
}

/**
 * An ioctl that allocates DMA resources: EDQUOT is one of the kernel's DMA
 * caps, which a sysctl raises.
 */
function dmaIoctl(fd: number, request: number, arg: Buffer, what: string): void {
  try {
    nb.ioctlBuffer(fd, request, arg, what);
  } catch (e) {
    throw dmaError(e);
  }
}

/** The UpciError for a failed DMA allocation ioctl, or `e` itself. */
export function dmaError(e: unknown): unknown {
  if (errnoOf(e) !== nb.EDQUOT) return e;
  return new UpciError(
    'OUT_OF_RANGE',
    'pciuser(4) refused the DMA allocation: it would pass the DMA memory this file or all files may hold (memory and maps both count)',
    'free DMA memory, or raise the caps as root: sysctl -w hw.pciuser.dma_file_max=<bytes> (and hw.pciuser.dma_total_max); sysctl hw.pciuser shows them',
    { cause: e },
  );
}

/**
 * A claimed function. Its /dev/pciN file (a per-open clone) is the claim,
 * the mmap source of its BARs and DMA memory, and its interrupt event source.
 */
export class NetbsdDevice extends RegionDevice implements DeviceFile {
  protected readonly table: RegionTable;
  readonly irqs: Readonly<Record<IrqKind, IrqInfo>>;
  readonly canReset = false;
  readonly dma: NetbsdDma;
  private readonly ioBars: readonly boolean[];
  /** Per BAR, the kernel's ranges (MSI-X table, PBA): PIO there is refused. */
  private readonly holes: readonly (readonly BarHole[])[];
  private established: IrqKind | undefined;

  constructor(
    address: PciAddress,
    fd: number,
    claim: Buffer,
  ) {
    super(address, fd);
    const t = abi.pciuserClaim;
    const regions: RegionInfo[] = [];
    const cookies: number[] = [];
    const ioBars: boolean[] = [];
    const holes: BarHole[][] = [];
    for (let bar = 0 as abi.BarIndex; bar < abi.PCIUSER_MAXBARS; bar = (bar + 1) as abi.BarIndex) {
      const flags = t.get(claim, abi.claimBarField(bar, 'pub_flags'));
      // The upper half of a 64-bit BAR and unusable BARs (unassigned among them) come back without VALID,
      // as VFIO reports them with size 0.
      const size = flags & abi.PCIUSER_BAR_VALID ? Number(t.get(claim, abi.claimBarField(bar, 'pub_size'))) : 0;
      const barHoles = [
        { offset: Number(t.get(claim, abi.claimBarField(bar, 'pub_msix_table'))), size: Number(t.get(claim, abi.claimBarField(bar, 'pub_msix_table_size'))) },
        { offset: Number(t.get(claim, abi.claimBarField(bar, 'pub_msix_pba'))), size: Number(t.get(claim, abi.claimBarField(bar, 'pub_msix_pba_size'))) },
      ].filter((h) => h.size > 0);
      const mappable = size > 0 && (flags & abi.PCIUSER_BAR_MMAP) !== 0;
      regions.push({ index: bar, kind: 'bar', size, readable: size > 0, writable: size > 0, mmapAreas: mappable ? barMmapAreas(size, barHoles) : [] });
      cookies.push(Number(t.get(claim, abi.claimBarField(bar, 'pub_cookie'))));
      ioBars.push((flags & abi.PCIUSER_BAR_IO) !== 0);
      holes.push(barHoles);
    }
    this.ioBars = ioBars;
    this.holes = holes;
    // pciuser(4) offers no expansion ROM access and no VGA ranges.
    regions.push(absent(ROM_INDEX));
    // 256 bytes, or 4096 for a PCI Express function whose extended space the kernel can reach without aliasing.
    const configSize = t.get(claim, 'puc_cfgsize');
    regions.push({ index: CONFIG_INDEX, kind: 'config', size: configSize, readable: true, writable: true, mmapAreas: [] });
    regions.push(absent(VGA_INDEX));
    // Config space is reached through ioctls, never at a file offset: its cookie is unused.
    this.table = new RegionTable(address, regions, [...cookies, 0, 0, 0]);

    const caps = t.get(claim, 'puc_caps');
    this.irqs = {
      // INTx needs a way to mask the line: the PCI 2.3 disable bit, or a declarative ack
      // (PCIUSER_IOC_INTR_SETACK) that the port interface cannot express; without the bit it is not offered.
      intx: { kind: 'intx', count: t.get(claim, 'puc_intrpin') !== 0 && caps & abi.PCIUSER_CAP_INTX_DISABLE ? 1 : 0, automasked: true, maskable: false },
      msi: { kind: 'msi', count: t.get(claim, 'puc_msi_count'), automasked: false, maskable: false },
      msix: { kind: 'msix', count: t.get(claim, 'puc_msix_count'), automasked: false, maskable: false },
    };
    this.dma = new NetbsdDma(fd, address, () => this.live());
  }

  private cfgRead(reg: number): number {
    const arg = abi.pciuserCfgreg.encode({ pcr_reg: reg });
    nb.ioctlBuffer(this.fd, abi.ioctls.PCIUSER_IOC_CFGREAD, arg, `PCIUSER_IOC_CFGREAD 0x${reg.toString(16)} of ${this.address}`);
    return abi.pciuserCfgreg.get(arg, 'pcr_val');
  }

  private cfgWrite(reg: number, value: number): void {
    const arg = abi.pciuserCfgreg.encode({ pcr_reg: reg, pcr_val: value >>> 0 });
    try {
      nb.ioctlBuffer(this.fd, abi.ioctls.PCIUSER_IOC_CFGWRITE, arg, `PCIUSER_IOC_CFGWRITE 0x${reg.toString(16)} of ${this.address}`);
    } catch (e) {
      if (errnoOf(e) !== nb.EPERM) throw e;
      throw new UpciError(
        'PERMISSION',
        `${this.address}: config register 0x${reg.toString(16)} belongs to the kernel (pciuser(4) lets a process write only the command/status, cache line/latency, PME, PCI Express control, vendor-specific and AER registers)`,
        undefined,
        { cause: e },
      );
    }
  }

  /** Config space through 32-bit CFGREAD: every dword the range touches. */
  private readConfig(offset: number, buf: Buffer): void {
    const dword = Buffer.alloc(4);
    for (let at = offset & ~3; at < offset + buf.length; at += 4) {
      dword.writeUInt32LE(this.cfgRead(at));
      const from = Math.max(offset, at);
      dword.copy(buf, from - offset, from - at, Math.min(offset + buf.length, at + 4) - at);
    }
  }

  /**
   * Config writes through 32-bit CFGWRITE (NetBSD's pci_conf_write has no
   * narrower access). A partial dword is read-modify-written, as NetBSD's own
   * drivers do; for the command/status dword the status half is written back
   * as zeros, since its bits are read-only or write-1-to-clear and echoing
   * them would clear pending status. Other registers with write-1-to-clear
   * bits sharing a dword with what is written (e.g. PCIe device status) can
   * be cleared the same way: write them as whole dwords.
   */
  private writeConfig(offset: number, buf: Buffer): void {
    const dword = Buffer.alloc(4);
    const end = offset + buf.length;
    for (let at = offset & ~3; at < end; at += 4) {
      const from = Math.max(offset, at);
      const to = Math.min(end, at + 4);
      if (to - from < 4) dword.writeUInt32LE((this.cfgRead(at) & (at === PCI_COMMAND_STATUS ? 0xffff : 0xffffffff)) >>> 0);
      buf.copy(dword, from - at, from - offset, to - offset);
      this.cfgWrite(at, dword.readUInt32LE(0));
    }
  }

  /**
   * BAR access through PIO ioctls, split into naturally aligned accesses of
   * at most 8 bytes (4 on I/O BARs). The MSI-X table and PBA are the
   * kernel's: refused here as the kernel would (EPERM).
   */
  private pio(bar: number, offset: number, buf: Buffer, write: boolean): void {
    if (touchesHole(this.holes[bar] ?? [], offset, buf.length, false)) {
      throw new UpciError('PERMISSION', `${this.address}: BAR${bar} +0x${offset.toString(16)} (${buf.length} bytes) touches the MSI-X table or PBA, which belong to the kernel`, 'program MSI-X through enableIrqs(\'msix\', n)');
    }
    const t = abi.pciuserPio;
    for (let done = 0; done < buf.length; ) {
      const at = offset + done;
      const width = [8, 4, 2, 1].find((w) => w <= buf.length - done && at % w === 0 && !(w === 8 && this.ioBars[bar]))!;
      const value = write ? (width === 8 ? buf.readBigUInt64LE(done) : BigInt(buf.readUIntLE(done, width))) : 0n;
      const arg = t.encode({ pio_bar: bar, pio_width: width, pio_offset: BigInt(at), pio_value: value });
      const what = `PCIUSER_IOC_PIO_${write ? 'WRITE' : 'READ'} BAR${bar} +0x${at.toString(16)} width ${width} of ${this.address}`;
      nb.ioctlBuffer(this.fd, write ? abi.ioctls.PCIUSER_IOC_PIO_WRITE : abi.ioctls.PCIUSER_IOC_PIO_READ, arg, what);
      if (!write) {
        const read = t.get(arg, 'pio_value');
        if (width === 8) buf.writeBigUInt64LE(read, done);
        else buf.writeUIntLE(Number(read), done, width);
      }
      done += width;
    }
  }

  readRegion(index: number, offset: number, buf: Buffer): void {
    if (this.locate(index, offset, buf.length).region.kind === 'config') this.readConfig(offset, buf);
    else this.pio(index, offset, buf, false);
  }

  writeRegion(index: number, offset: number, buf: Buffer): void {
    if (this.locate(index, offset, buf.length).region.kind === 'config') this.writeConfig(offset, buf);
    else this.pio(index, offset, buf, true);
  }

  reset(): void {
    this.live();
    throw new UpciError(
      'KERNEL',
      `${this.address}: pciuser(4) has no reset ioctl, so upci cannot reset a function on NetBSD`,
      'reinitialize the device through its own registers; a PCIUSER_IOC_RESET (FLR or D3hot->D0) in kernel/netbsd/sys/dev/pci/pci_user.c would be needed',
    );
  }

  /**
   * PCIUSER_IOC_INTR_ESTABLISH for `count` vectors of `kind`, replacing any
   * previous setup. The device file itself is the interrupt source: read(2)
   * returns one pciuser_intr_event {vector, count} per vector that fired
   * since the last read, and kqueue EVFILT_READ reports when there is one;
   * the fd was opened O_NONBLOCK, so an empty read is EAGAIN. The source is
   * owned by this device: close() closes it. INTx starts masked by the
   * kernel on each interrupt until unmaskIntx().
   */
  enableIrqs(kind: IrqKind, count: number): IrqSource[] {
    this.live();
    const offered = this.irqs[kind].count;
    if (!Number.isInteger(count) || count < 1 || count > Math.min(offered, abi.PCIUSER_MAXVECS)) {
      throw new UpciError('OUT_OF_RANGE', `${this.address} offers ${offered} ${kind} vector(s) (pciuser(4) at most ${abi.PCIUSER_MAXVECS}); ${count} requested`);
    }
    if (this.established !== undefined) this.disableIrqs(this.established);
    const arg = abi.pciuserIntrSetup.encode({ pis_type: INTR_TYPE[kind], pis_count: count });
    try {
      nb.ioctlBuffer(this.fd, abi.ioctls.PCIUSER_IOC_INTR_ESTABLISH, arg, `PCIUSER_IOC_INTR_ESTABLISH ${kind} x${count} on ${this.address}`);
    } catch (e) {
      if (errnoOf(e) === nb.EOPNOTSUPP) {
        throw new UpciError('KERNEL', `${this.address} cannot mask INTx (no PCI 2.3 interrupt disable bit), so the kernel will not establish it`, 'use MSI or MSI-X if the device has them', { cause: e });
      }
      throw e;
    }
    this.established = kind;
    // MSI/MSI-X may be granted fewer vectors than asked; the contract is all or nothing.
    const granted = abi.pciuserIntrSetup.get(arg, 'pis_count');
    if (granted < count) {
      this.disableIrqs(kind);
      throw new UpciError('OUT_OF_RANGE', `${this.address}: the kernel granted ${granted} of the ${count} ${kind} vectors asked for`, `ask for at most ${granted}`);
    }
    return [{ fd: this.fd, format: 'records', firstVector: 0, vectors: count, owner: 'device' }];
  }

  /** pciuser(4) holds one interrupt type at a time; disabling another kind than the established one is a no-op, as under VFIO. */
  disableIrqs(kind: IrqKind): void {
    this.live();
    if (this.established !== kind) return;
    nb.ioctlValue(this.fd, abi.ioctls.PCIUSER_IOC_INTR_DISESTABLISH, 0, `PCIUSER_IOC_INTR_DISESTABLISH ${this.address}`);
    this.established = undefined;
  }

  unmaskIntx(): void {
    this.live();
    nb.ioctlBuffer(this.fd, abi.ioctls.PCIUSER_IOC_INTR_UNMASK, abi.pciuserIntrUnmask.encode({ piu_vector: 0 }), `PCIUSER_IOC_INTR_UNMASK ${this.address}`);
  }

  /** The last close tears down in the kernel: bus mastering off, interrupts, DMA maps, then the claim (DESIGN.md). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    nb.close(this.fd);
  }
}

/**
 * Finds /dev/pciN for a bus. N is the pci(4) unit number, which equals the
 * bus number only when buses attached in order (usual with one host bridge,
 * not guaranteed), so /dev/pci<bus> is tried first and then every other
 * /dev/pci*; the one whose PCI_IOC_BUSINFO reports the bus is kept, open.
 * NetBSD's /dev/pciN have no PCI domain (segment): only domain 0 is reachable.
 */
function openBus(devDir: string, bus: number): number {
  const others = readdirSync(devDir)
    .filter((name) => /^pci\d+$/.test(name) && name !== `pci${bus}`)
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  for (const name of [`pci${bus}`, ...others]) {
    const path = join(devDir, name);
    let fd: number;
    try {
      // Non-blocking: the interrupt worker reads records only after kqueue says there are some.
      fd = nb.open(path, nb.O_RDWR | nb.O_NONBLOCK);
    } catch (e) {
      const errno = errnoOf(e);
      if (errno === nb.ENOENT || errno === nb.ENXIO) continue;
      if (errno === nb.EACCES || errno === nb.EPERM) throw new UpciError('PERMISSION', `no permission to open ${path} read-write`, 'run as root', { cause: e });
      throw e;
    }
    try {
      const info = abi.pciioBusinfo.alloc();
      nb.ioctlBuffer(fd, abi.PCI_IOC_BUSINFO, info, `PCI_IOC_BUSINFO ${path}`);
      if (abi.pciioBusinfo.get(info, 'busno') === bus) return fd;
    } catch (e) {
      nb.close(fd);
      throw e;
    }
    nb.close(fd);
  }
  throw new UpciError('NO_DEVICE', `no /dev/pciN in ${devDir} is PCI bus ${bus}`, '`pcictl pciN list` for each /dev/pciN shows which buses exist');
}

function claimError(address: PciAddress, e: unknown): unknown {
  switch (errnoOf(e)) {
    case nb.EBUSY:
      return new UpciError('BUSY', `${address} is attached to a kernel driver or claimed by another open file`, 'detach its driver (`drvctl -l` names it, `drvctl -d <driver>` detaches it) or stop the other user', { cause: e });
    case nb.ENXIO:
      return new UpciError('NO_DEVICE', `there is no PCI function at ${address}`, '`pcictl pciN list` shows the functions of a bus', { cause: e });
    case nb.ENODEV:
      return new UpciError('NO_DEVICE', `${address} is a bridge; pciuser(4) hands out only type 0 functions`, undefined, { cause: e });
    case nb.EPERM:
    case nb.EACCES:
      return new UpciError('PERMISSION', `claiming ${address} needs the right to unmanaged memory`, 'run as root with securelevel 0 or lower (a claimed device can DMA anywhere without an IOMMU)', { cause: e });
    case nb.ENOTTY: // pci(4) without the pciuser(4) hooks
      return new UpciError('KERNEL', 'this kernel\'s pci(4) has no user driver support (PCIUSER_IOC_CLAIM is unknown)', 'build a kernel with kernel/netbsd/apply.sh applied', { cause: e });
    default:
      return e;
  }
}

export class NetbsdPciPort implements KernelPort {
  readonly name = 'pciuser';

  constructor(private readonly devDir = '/dev') {}

  open(address: PciAddress): DeviceFile {
    const { domain, bus, slot, func } = pciAddressParts(address);
    if (domain !== 0) {
      throw new UpciError('NO_DEVICE', `${address} is in PCI domain ${domain}; NetBSD's /dev/pciN reach domain 0 only`);
    }
    const fd = openBus(this.devDir, bus);
    try {
      const claim = abi.pciuserClaim.encode({ puc_bus: bus, puc_device: slot, puc_function: func });
      try {
        nb.ioctlBuffer(fd, abi.ioctls.PCIUSER_IOC_CLAIM, claim, `PCIUSER_IOC_CLAIM ${address}`);
      } catch (e) {
        throw claimError(address, e);
      }
      const version = abi.pciuserClaim.get(claim, 'puc_version');
      if (version !== abi.PCIUSER_ABI_VERSION) {
        throw new UpciError('KERNEL', `the kernel speaks pciuser ABI version ${version}, upci speaks ${abi.PCIUSER_ABI_VERSION}`, 'use a upci and kernel built from the same kernel/netbsd sources');
      }
      return new NetbsdDevice(address, fd, claim);
    } catch (e) {
      nb.close(fd);
      throw e;
    }
  }
}
