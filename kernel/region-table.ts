/**
 * A device's regions as a kernel port found them, and the checks every port
 * makes before touching one: that it exists, that an mmap matches an area
 * the kernel allows, that an access lies inside it.
 */
import { UpciError } from './errors.js';
import type { PciAddress } from './pci-address.js';
import type { MmapArea, MmapSource, RegionInfo } from './port.js';

/** What every port's device file shares: its claim's fd, its region table, and refusing use after close. */
export abstract class RegionDevice {
  protected closed = false;
  protected abstract readonly table: RegionTable;

  constructor(
    readonly address: PciAddress,
    protected readonly fd: number,
  ) {}

  protected live(): void {
    if (this.closed) throw new UpciError('RELEASED', `${this.address} has been released`, 'open the device again');
  }

  get regions(): readonly RegionInfo[] {
    return this.table.regions;
  }

  region(index: number): RegionInfo {
    return this.table.region(index);
  }

  mmapSource(index: number, area: MmapArea): MmapSource {
    this.live();
    return this.table.mmapSource(this.fd, index, area);
  }

  /** Where `length` bytes at `offset` of a region are, once checked (and the device is still open). */
  protected locate(index: number, offset: number, length: number): { region: RegionInfo; fileOffset: number } {
    this.live();
    return this.table.locate(index, offset, length);
  }
}

export class RegionTable {
  constructor(
    private readonly address: PciAddress,
    readonly regions: readonly RegionInfo[],
    /** Per region, the device-file offset where it starts (VFIO's region offset, NetBSD's mmap cookie). */
    private readonly fileOffsets: readonly number[],
  ) {}

  region(index: number): RegionInfo {
    const region = this.regions[index];
    if (region === undefined || region.size === 0) {
      throw new UpciError('NO_SUCH_REGION', `${this.address} has no region ${index}`, 'see `upci info` for the regions it has');
    }
    return region;
  }

  mmapSource(fd: number, index: number, area: MmapArea): MmapSource {
    const region = this.region(index);
    if (!region.mmapAreas.some((a) => a.offset === area.offset && a.size === area.size)) {
      throw new UpciError('NOT_MAPPABLE', `${this.address} region ${index} has no mmappable area at +0x${area.offset.toString(16)} of ${area.size} bytes`);
    }
    return { fd, fileOffset: this.fileOffsets[index]! + area.offset, size: area.size, writable: region.writable };
  }

  /** The region and file offset of `length` bytes at `offset`, once they are known to lie inside it. */
  locate(index: number, offset: number, length: number): { region: RegionInfo; fileOffset: number } {
    const region = this.region(index);
    if (!Number.isInteger(offset) || offset < 0 || offset + length > region.size) {
      throw new UpciError('OUT_OF_RANGE', `${this.address} region ${index}: ${length} bytes at 0x${offset.toString(16)} fall outside its ${region.size} bytes`);
    }
    return { region, fileOffset: this.fileOffsets[index]! + offset };
  }
}
