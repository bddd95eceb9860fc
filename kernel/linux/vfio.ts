/**
 * The kernel port on Linux: VFIO's container/group API with the type1v2
 * IOMMU (Debian's kernels have no iommufd).
 */
import { join } from 'node:path';
import { SyscallError, UpciError } from '../errors.js';
import * as libc from '../libc.js';
import type { PciAddress } from '../pci-address.js';
import type {
  DeviceFile, DeviceHandles, DmaAccess, DmaDomain, IrqInfo, IrqKind, IrqSource, KernelChannel, KernelPort, MmapArea, PcieErrorCount,
  RegionInfo, RegionKind,
} from '../port.js';
import { RegionDevice, RegionTable } from '../region-table.js';
import { ManagedIommuDomain, type IommuDmaDomain } from './iommu-dma.js';
import { memlockError, readMemlock } from './memlock.js';
import { groupAccessError } from './vfio-user.js';
import type { IovaRange } from './iova-allocator.js';
import * as abi from './vfio-abi.js';
import { aerErrorCounts, describeBlockers, groupBlockers, requireUsable, type SysfsRoots, defaultRoots } from './sysfs.js';

const EPERM = 1;
const EACCES = 13;
const ENOMEM = 12;

const IRQ_INDEX: Record<IrqKind, number> = {
  intx: abi.VFIO_PCI_INTX_IRQ_INDEX,
  msi: abi.VFIO_PCI_MSI_IRQ_INDEX,
  msix: abi.VFIO_PCI_MSIX_IRQ_INDEX,
};

/** The IRQ index on which VFIO signals each kernel channel. */
const CHANNEL_INDEX: Record<KernelChannel, number> = {
  request: abi.VFIO_PCI_REQ_IRQ_INDEX,
  error: abi.VFIO_PCI_ERR_IRQ_INDEX,
};


function regionKind(index: number): RegionKind {
  if (index < abi.VFIO_PCI_ROM_REGION_INDEX) return 'bar';
  if (index === abi.VFIO_PCI_ROM_REGION_INDEX) return 'rom';
  if (index === abi.VFIO_PCI_CONFIG_REGION_INDEX) return 'config';
  return 'vga';
}

/** Walks a VFIO capability chain in an info buffer, yielding (id, offset). */
function* capabilities(buf: Buffer, first: number): Generator<{ id: number; offset: number }> {
  const seen = new Set<number>();
  for (let at = first; at !== 0 && !seen.has(at) && at + abi.vfioInfoCapHeader.size <= buf.length; ) {
    seen.add(at);
    yield { id: abi.vfioInfoCapHeader.get(buf, 'id', at), offset: at };
    at = abi.vfioInfoCapHeader.get(buf, 'next', at);
  }
}

/**
 * Runs an INFO ioctl whose answer may carry a capability chain: VFIO reports
 * the size it needs in argsz, so ask again with that much room.
 */
function infoWithCaps(fd: number, request: number, first: Buffer, what: string): Buffer {
  libc.ioctlBuffer(fd, request, first, what);
  const needed = first.readUInt32LE(0);
  if (needed <= first.length) return first;
  const again = Buffer.alloc(needed);
  first.copy(again);
  again.writeUInt32LE(needed, 0);
  libc.ioctlBuffer(fd, request, again, what);
  return again;
}

/** One VFIO container holding one group: the IOMMU domain of every device in that group. */
class VfioGroup implements IommuDmaDomain {
  readonly iovaRanges: readonly IovaRange[];
  readonly pageSizes: bigint;
  /** The DMA domain of every device in the group, IOVAs managed in this process. */
  readonly dma: DmaDomain;
  private users = 0;
  /** Argument structs reused by every map/unmap: these are a driver's hot path. */
  private readonly mapArg = abi.vfioIommuType1DmaMap.alloc();
  private readonly unmapArg = abi.vfioIommuType1DmaUnmap.alloc();

  constructor(
    readonly number: number,
    readonly groupFd: number,
    readonly containerFd: number,
    /** Called when the last device of the group closes; undefined for a group adopted from another thread, whose fds are not ours to close. */
    private readonly onLastClose: (() => void) | undefined,
    /** Adopted: the window of the container's IOVA space the opener reserved for this thread. */
    dmaWindow?: readonly IovaRange[],
  ) {
    const info = infoWithCaps(containerFd, abi.ioctls.VFIO_IOMMU_GET_INFO, abi.vfioIommuType1Info.alloc(), 'VFIO_IOMMU_GET_INFO');
    const t = abi.vfioIommuType1Info;
    this.pageSizes = t.get(info, 'iova_pgsizes');
    const ranges: IovaRange[] = [];
    if (t.get(info, 'flags') & abi.VFIO_IOMMU_INFO_CAPS) {
      for (const cap of capabilities(info, t.get(info, 'cap_offset'))) {
        if (cap.id !== abi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) continue;
        const c = abi.vfioIommuType1InfoCapIovaRange;
        const n = c.get(info, 'nr_iovas', cap.offset);
        for (let i = 0; i < n; i++) {
          const at = cap.offset + c.size + i * abi.vfioIovaRange.size;
          ranges.push({ start: abi.vfioIovaRange.get(info, 'start', at), end: abi.vfioIovaRange.get(info, 'end', at) });
        }
      }
    }
    // A kernel without the capability accepts any IOVA the IOMMU's width allows.
    this.iovaRanges = ranges.length > 0 ? ranges : [{ start: 0n, end: (1n << 39n) - 1n }];
    this.dma = new ManagedIommuDomain(this, dmaWindow);
  }

  availableMappings(): number | undefined {
    const info = infoWithCaps(this.containerFd, abi.ioctls.VFIO_IOMMU_GET_INFO, abi.vfioIommuType1Info.alloc(), 'VFIO_IOMMU_GET_INFO');
    const t = abi.vfioIommuType1Info;
    if (!(t.get(info, 'flags') & abi.VFIO_IOMMU_INFO_CAPS)) return undefined;
    for (const cap of capabilities(info, t.get(info, 'cap_offset'))) {
      if (cap.id === abi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) return abi.vfioIommuType1InfoDmaAvail.get(info, 'avail', cap.offset);
    }
    return undefined;
  }

  map(vaddr: bigint, iova: bigint, size: number, access: DmaAccess): void {
    const t = abi.vfioIommuType1DmaMap;
    const arg = this.mapArg;
    t.set(arg, 'flags', (access === 'write' ? 0 : abi.VFIO_DMA_MAP_FLAG_READ) | (access === 'read' ? 0 : abi.VFIO_DMA_MAP_FLAG_WRITE));
    t.set(arg, 'vaddr', vaddr);
    t.set(arg, 'iova', iova);
    t.set(arg, 'size', BigInt(size));
    const operation = () => `VFIO_IOMMU_MAP_DMA iova 0x${iova.toString(16)} size ${size}`;
    try {
      libc.ioctlBuffer(this.containerFd, abi.ioctls.VFIO_IOMMU_MAP_DMA, arg, operation);
    } catch (e) {
      // Over RLIMIT_MEMLOCK type1 answers ENOMEM (EPERM on some kernels); say so when the limit explains it.
      if (e instanceof SyscallError && (e.errno === ENOMEM || e.errno === EPERM)) throw memlockError(operation(), size, readMemlock()) ?? e;
      throw e;
    }
  }

  unmap(iova: bigint, size: bigint): bigint {
    const t = abi.vfioIommuType1DmaUnmap;
    const arg = this.unmapArg;
    t.set(arg, 'iova', iova);
    t.set(arg, 'size', size);
    libc.ioctlBuffer(this.containerFd, abi.ioctls.VFIO_IOMMU_UNMAP_DMA, arg, () => `VFIO_IOMMU_UNMAP_DMA iova 0x${iova.toString(16)} size 0x${size.toString(16)}`);
    // The kernel writes back how much it unmapped.
    return t.get(arg, 'size');
  }

  retain(): void {
    this.users++;
  }

  release(): void {
    if (--this.users > 0 || this.onLastClose === undefined) return;
    // Closing the group fd detaches it from the container, which drops every DMA mapping.
    libc.close(this.groupFd);
    libc.close(this.containerFd);
    this.onLastClose();
  }
}

class VfioDevice extends RegionDevice implements DeviceFile {
  protected readonly table: RegionTable;
  readonly irqs: Readonly<Record<IrqKind, IrqInfo>>;
  readonly canReset: boolean;

  constructor(
    address: PciAddress,
    fd: number,
    private readonly group: VfioGroup,
    /** Adopted from another thread (VfioPort.adopt): close() closes nothing. */
    private readonly adopted = false,
    /** Where the kernel counts the function's uncorrectable PCIe errors. */
    private readonly roots: SysfsRoots = defaultRoots,
  ) {
    super(address, fd);
    const info = abi.vfioDeviceInfo.alloc();
    libc.ioctlBuffer(fd, abi.ioctls.VFIO_DEVICE_GET_INFO, info, 'VFIO_DEVICE_GET_INFO');
    const flags = abi.vfioDeviceInfo.get(info, 'flags');
    if (!(flags & abi.VFIO_DEVICE_FLAGS_PCI)) throw new UpciError('KERNEL', `${address} is not a VFIO PCI device`);
    this.canReset = (flags & abi.VFIO_DEVICE_FLAGS_RESET) !== 0;
    const regions: RegionInfo[] = [];
    const offsets: number[] = [];
    const numRegions = Math.min(abi.vfioDeviceInfo.get(info, 'num_regions'), abi.VFIO_PCI_VGA_REGION_INDEX + 1);
    for (let index = 0; index < numRegions; index++) {
      const { region, fileOffset } = this.queryRegion(index);
      regions.push(region);
      offsets.push(fileOffset);
    }
    this.table = new RegionTable(address, regions, offsets);
    this.irqs = {
      intx: this.queryIrq('intx'),
      msi: this.queryIrq('msi'),
      msix: this.queryIrq('msix'),
    };
  }

  get dma(): DmaDomain {
    return this.group.dma;
  }

  get handles(): DeviceHandles {
    return {
      port: 'vfio',
      address: this.address,
      group: this.group.number,
      fds: { device: this.fd, group: this.group.groupFd, container: this.group.containerFd },
    };
  }

  private queryRegion(index: number): { region: RegionInfo; fileOffset: number } {
    const t = abi.vfioRegionInfo;
    const first = t.encode({ index });
    let buf: Buffer;
    try {
      buf = infoWithCaps(this.fd, abi.ioctls.VFIO_DEVICE_GET_REGION_INFO, first, `VFIO_DEVICE_GET_REGION_INFO ${index}`);
    } catch (e) {
      // VGA is absent on most devices; vfio-pci answers EINVAL for it.
      if (e instanceof SyscallError && e.errno === 22) {
        return { region: { index, kind: regionKind(index), size: 0, readable: false, writable: false, mmapAreas: [] }, fileOffset: 0 };
      }
      throw e;
    }
    const flags = t.get(buf, 'flags');
    const size = Number(t.get(buf, 'size'));
    let mmapAreas: MmapArea[] = [];
    if (flags & abi.VFIO_REGION_INFO_FLAG_MMAP && size > 0) {
      mmapAreas = [{ offset: 0, size }];
      if (flags & abi.VFIO_REGION_INFO_FLAG_CAPS) {
        for (const cap of capabilities(buf, t.get(buf, 'cap_offset'))) {
          if (cap.id !== abi.VFIO_REGION_INFO_CAP_SPARSE_MMAP) continue;
          const s = abi.vfioRegionInfoCapSparseMmap;
          const n = s.get(buf, 'nr_areas', cap.offset);
          mmapAreas = [];
          for (let i = 0; i < n; i++) {
            const at = cap.offset + s.size + i * abi.vfioRegionSparseMmapArea.size;
            const area = {
              offset: Number(abi.vfioRegionSparseMmapArea.get(buf, 'offset', at)),
              size: Number(abi.vfioRegionSparseMmapArea.get(buf, 'size', at)),
            };
            if (area.size > 0) mmapAreas.push(area);
          }
        }
      }
    }
    return {
      region: {
        index,
        kind: regionKind(index),
        size,
        readable: (flags & abi.VFIO_REGION_INFO_FLAG_READ) !== 0,
        writable: (flags & abi.VFIO_REGION_INFO_FLAG_WRITE) !== 0,
        mmapAreas,
      },
      fileOffset: Number(t.get(buf, 'offset')),
    };
  }

  private queryIrq(kind: IrqKind): IrqInfo {
    const buf = abi.vfioIrqInfo.encode({ index: IRQ_INDEX[kind] });
    libc.ioctlBuffer(this.fd, abi.ioctls.VFIO_DEVICE_GET_IRQ_INFO, buf, `VFIO_DEVICE_GET_IRQ_INFO ${kind}`);
    const flags = abi.vfioIrqInfo.get(buf, 'flags');
    return {
      kind,
      count: abi.vfioIrqInfo.get(buf, 'count'),
      automasked: (flags & abi.VFIO_IRQ_INFO_AUTOMASKED) !== 0,
      maskable: (flags & abi.VFIO_IRQ_INFO_MASKABLE) !== 0,
    };
  }

  readRegion(index: number, offset: number, buf: Buffer): void {
    libc.preadExact(this.fd, buf, this.locate(index, offset, buf.length).fileOffset, () => `read of ${this.address} region ${index} at 0x${offset.toString(16)}`);
  }

  writeRegion(index: number, offset: number, buf: Buffer): void {
    libc.pwriteExact(this.fd, buf, this.locate(index, offset, buf.length).fileOffset, () => `write of ${this.address} region ${index} at 0x${offset.toString(16)}`);
  }

  reset(): void {
    this.live();
    if (!this.canReset) throw new UpciError('KERNEL', `${this.address} offers no reset method to VFIO`);
    libc.ioctlValue(this.fd, abi.ioctls.VFIO_DEVICE_RESET, 0, `VFIO_DEVICE_RESET ${this.address}`);
  }

  private setIrqs(kind: IrqKind | KernelChannel, flags: number, start: number, count: number, payload: Buffer): void {
    const t = abi.vfioIrqSet;
    const buf = t.alloc(payload.length);
    t.set(buf, 'flags', flags);
    t.set(buf, 'index', kind === 'request' || kind === 'error' ? CHANNEL_INDEX[kind] : IRQ_INDEX[kind]);
    t.set(buf, 'start', start);
    t.set(buf, 'count', count);
    payload.copy(buf, t.size);
    libc.ioctlBuffer(this.fd, abi.ioctls.VFIO_DEVICE_SET_IRQS, buf, () => `VFIO_DEVICE_SET_IRQS ${kind} ${this.address}`);
  }

  /** One eventfd per vector, created here and handed to the caller (owner 'hub') once VFIO signals them. */
  enableIrqs(kind: IrqKind, count: number): IrqSource[] {
    this.live();
    const offered = this.irqs[kind].count;
    if (!Number.isInteger(count) || count < 1 || count > offered) {
      throw new UpciError('OUT_OF_RANGE', `${this.address} offers ${offered} ${kind} vector(s); ${count} requested`);
    }
    const eventfds: number[] = [];
    try {
      const payload = Buffer.alloc(4 * count);
      for (let i = 0; i < count; i++) {
        const fd = libc.eventfd(libc.EFD_NONBLOCK);
        eventfds.push(fd);
        payload.writeInt32LE(fd, 4 * i);
      }
      this.setIrqs(kind, abi.VFIO_IRQ_SET_DATA_EVENTFD | abi.VFIO_IRQ_SET_ACTION_TRIGGER, 0, count, payload);
    } catch (e) {
      for (const fd of eventfds) libc.close(fd);
      throw e;
    }
    return eventfds.map((fd, i) => ({ fd, format: 'counter', firstVector: i, vectors: 1, owner: 'hub' }));
  }

  disableIrqs(kind: IrqKind): void {
    this.live();
    this.setIrqs(kind, abi.VFIO_IRQ_SET_DATA_NONE | abi.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, Buffer.alloc(0));
  }

  /**
   * VFIO_DEVICE_GET_IRQ_INFO on the channel's index (REQ, ERR) first: a
   * device (or a kernel) that offers no such channel gets none, and is still
   * claimed; vfio-pci offers ERR only on PCIe functions, count 1. Then one
   * eventfd, DATA_EVENTFD|ACTION_TRIGGER, count 1. vfio-pci signals REQ from
   * vfio_pci_core_request (every 10 s while the unbind waits) until the
   * device fd closes, and ERR from vfio_pci_core_aer_err_detected, when
   * the kernel's AER driver (pcieport) routes an uncorrectable error of the
   * function to it; closing the device drops both.
   */
  enableChannel(channel: KernelChannel): IrqSource | undefined {
    this.live();
    // An adopting thread never takes a channel: the opener watches it.
    if (this.adopted) return undefined;
    const info = abi.vfioIrqInfo.encode({ index: CHANNEL_INDEX[channel] });
    try {
      libc.ioctlBuffer(this.fd, abi.ioctls.VFIO_DEVICE_GET_IRQ_INFO, info, `VFIO_DEVICE_GET_IRQ_INFO ${channel} ${this.address}`);
    } catch (e) {
      // An index past num_irqs is EINVAL: no such channel on this kernel.
      if (e instanceof SyscallError && e.errno === 22) return undefined;
      throw e;
    }
    if (abi.vfioIrqInfo.get(info, 'count') < 1 || !(abi.vfioIrqInfo.get(info, 'flags') & abi.VFIO_IRQ_INFO_EVENTFD)) return undefined;
    const fd = libc.eventfd(libc.EFD_NONBLOCK);
    try {
      const payload = Buffer.alloc(4);
      payload.writeInt32LE(fd, 0);
      this.setIrqs(channel, abi.VFIO_IRQ_SET_DATA_EVENTFD | abi.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, payload);
    } catch (e) {
      libc.close(fd);
      throw e;
    }
    return { fd, format: 'counter', firstVector: 0, vectors: 1, owner: 'hub' };
  }

  uncorrectableErrors(): PcieErrorCount[] | undefined {
    return aerErrorCounts(this.roots, this.address);
  }

  unmaskIntx(): void {
    this.live();
    this.setIrqs('intx', abi.VFIO_IRQ_SET_DATA_NONE | abi.VFIO_IRQ_SET_ACTION_UNMASK, 0, 1, Buffer.alloc(0));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.adopted) return;
    libc.close(this.fd);
    this.group.release();
  }
}

export class VfioPort implements KernelPort {
  readonly name = 'vfio';
  private readonly groups = new Map<number, VfioGroup>();

  constructor(private readonly roots: SysfsRoots = defaultRoots) {}

  private openGroup(number: number, address: PciAddress): VfioGroup {
    const existing = this.groups.get(number);
    if (existing !== undefined) return existing;
    const path = join(this.roots.dev, 'vfio', String(number));
    let groupFd: number;
    try {
      groupFd = libc.open(path, libc.O_RDWR);
    } catch (e) {
      const errno = e instanceof SyscallError ? e.errno : 0;
      if (errno === EACCES || errno === EPERM) throw groupAccessError(path, number, address);
      if (errno === 16) throw new UpciError('BUSY', `IOMMU group ${number} (${path}) is in use by another process`, 'stop the other user of the device (`fuser` shows it) and try again');
      if (errno === 2) throw new UpciError('NO_VFIO', `${path} is missing`, 'load vfio-pci (`modprobe vfio-pci`) and bind the device with `upci bind`');
      throw e;
    }
    let containerFd = -1;
    try {
      const status = abi.vfioGroupStatus.alloc();
      libc.ioctlBuffer(groupFd, abi.ioctls.VFIO_GROUP_GET_STATUS, status, 'VFIO_GROUP_GET_STATUS');
      if (!(abi.vfioGroupStatus.get(status, 'flags') & abi.VFIO_GROUP_FLAGS_VIABLE)) {
        const blockers = groupBlockers(this.roots, number);
        throw new UpciError(
          'GROUP_NOT_VIABLE',
          `IOMMU group ${number} is not viable: ${blockers.length > 0 ? `it also holds ${describeBlockers(blockers)}` : 'another device in it is bound to a kernel driver'}`,
          blockers.length > 0
            ? `bind every device of the group to vfio-pci (as root): ${blockers.map((b) => `upci bind ${b.address}`).join('; ')}`
            : `list the group with \`ls /sys/kernel/iommu_groups/${number}/devices\` and bind each device to vfio-pci`,
        );
      }
      containerFd = libc.open(join(this.roots.dev, 'vfio/vfio'), libc.O_RDWR);
      const version = libc.ioctlValue(containerFd, abi.ioctls.VFIO_GET_API_VERSION, 0, 'VFIO_GET_API_VERSION');
      if (version !== abi.VFIO_API_VERSION) throw new UpciError('NO_VFIO', `VFIO API version ${version} is not the ${abi.VFIO_API_VERSION} upci speaks`);
      if (libc.ioctlValue(containerFd, abi.ioctls.VFIO_CHECK_EXTENSION, abi.VFIO_TYPE1v2_IOMMU, 'VFIO_CHECK_EXTENSION') !== 1) {
        throw new UpciError('NO_VFIO', 'the kernel lacks the VFIO type1v2 IOMMU driver', 'load it with `modprobe vfio_iommu_type1`');
      }
      const containerArg = Buffer.alloc(4);
      containerArg.writeInt32LE(containerFd);
      libc.ioctlBuffer(groupFd, abi.ioctls.VFIO_GROUP_SET_CONTAINER, containerArg, 'VFIO_GROUP_SET_CONTAINER');
      libc.ioctlValue(containerFd, abi.ioctls.VFIO_SET_IOMMU, abi.VFIO_TYPE1v2_IOMMU, 'VFIO_SET_IOMMU type1v2');
      const group = new VfioGroup(number, groupFd, containerFd, () => this.groups.delete(number));
      this.groups.set(number, group);
      return group;
    } catch (e) {
      if (containerFd >= 0) libc.close(containerFd);
      libc.close(groupFd);
      throw e;
    }
  }

  adopt(handles: DeviceHandles): DeviceFile {
    const { device, group: groupFd, container } = handles.fds;
    if (handles.port !== this.name || device === undefined || groupFd === undefined || container === undefined || handles.group === undefined) {
      throw new UpciError('KERNEL', `${handles.address}: not the handles of a VFIO device (${JSON.stringify(handles, (_, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v))})`);
    }
    // Without a window this thread's IOVAs would come from the whole space, which the opener allocates from too.
    if (handles.dmaWindow === undefined) throw new UpciError('KERNEL', `${handles.address}: the shared VFIO handles carry no DMA window`, 'share the device with PciDevice.share(), which reserves one');
    return new VfioDevice(handles.address, device, new VfioGroup(handles.group, groupFd, container, undefined, handles.dmaWindow), true);
  }

  open(address: PciAddress): DeviceFile {
    const { group: number } = requireUsable(this.roots, address);
    const group = this.openGroup(number, address);
    group.retain();
    try {
      const fd = libc.ioctlBuffer(group.groupFd, abi.ioctls.VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${address}\0`), `VFIO_GROUP_GET_DEVICE_FD ${address}`);
      try {
        return new VfioDevice(address, fd, group, false, this.roots);
      } catch (e) {
        libc.close(fd);
        throw e;
      }
    } catch (e) {
      group.release();
      if (e instanceof SyscallError && e.errno === 16) {
        throw new UpciError('BUSY', `${address} is already open (in this or another process)`, 'close the other handle first', { cause: e });
      }
      throw e;
    }
  }
}
