/**
 * A driver's view of its function's config space: every byte and every
 * capability (standard, extended, vendor-specific) readable, and writes
 * only where they cannot take something from the host or the kernel. The
 * bus-master bit is the host's (DriverDma turns it on and off, and the
 * host turns it off to quiesce); the INTx-disable bit, the MSI and MSI-X
 * capabilities and the interrupt line are the kernel's (pci_intr); the BARs
 * and the expansion ROM are where the kernel put them, and the host maps
 * them (mapBar). The remaining header registers are read-only or belong to
 * the platform, and a capability's id and next pointer shape the list
 * every walk trusts. A refused write is an UpciError naming the register.
 */
import { UpciError } from '../kernel/errors.js';
import {
  CONFIG_SPACE_SIZE, PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_MASTER, PCI_STATUS, decodeMsi, walkCapabilities,
  type Capability, type ConfigReader, type Width,
} from './config.js';

/** What a driver may do with config space (DriverBus.config()). */
export interface DriverConfig {
  readonly size: number;
  read(width: Width, offset: number): number;
  /** Refused (HOST_OWNED) where the register is the host's or the kernel's; see the module comment. */
  write(width: Width, offset: number, value: number): void;
  /** The standard list, then the PCIe extended list when config space has it. */
  capabilities(): readonly Capability[];
  /** Every capability with `id` (vendor-specific ones come several times), in list order. */
  capabilitiesOf(id: number, extended?: boolean): readonly Capability[];
}

/** What DriverConfig needs of a function's config space (pci/device.ts ConfigSpace). */
export interface ConfigAccess extends ConfigReader {
  readonly size: number;
  write(width: Width, offset: number, value: number): void;
}

const CAP_MSI = 0x05;
const CAP_MSIX = 0x11;
/** Command-register bits a driver may not change. */
const HOST_COMMAND_BITS = PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
/** Header bytes a driver may write: command (less HOST_COMMAND_BITS), status (its write-one-to-clear error bits), cache line size, latency timer. */
const WRITABLE_HEADER = new Set([PCI_COMMAND, PCI_COMMAND + 1, PCI_STATUS, PCI_STATUS + 1, 0x0c, 0x0d]);
const HEADER_NAMES: readonly [number, number, string, string][] = [
  [0x10, 0x28, 'a BAR register', 'the kernel placed the BARs; map one with mapBar()'],
  [0x30, 0x34, 'the expansion ROM BAR', 'the kernel placed it; the host does not map ROMs for drivers'],
  [0x3c, 0x3d, 'the interrupt line', 'interrupts are the kernel\'s: use establishInterrupts()'],
];

const hex = (n: number) => `0x${n.toString(16)}`;

export class DriverConfigSpace implements DriverConfig {
  readonly #access: ConfigAccess;
  #caps: readonly Capability[] | undefined;

  constructor(access: ConfigAccess) {
    this.#access = access;
  }

  get size(): number {
    return this.#access.size;
  }

  read(width: Width, offset: number): number {
    return this.#access.read(width, offset);
  }

  capabilities(): readonly Capability[] {
    // The list is the device's structure, fixed while it is attached (its links are not writable here).
    return (this.#caps ??= walkCapabilities(this.#access, Math.max(this.#access.size, CONFIG_SPACE_SIZE)));
  }

  capabilitiesOf(id: number, extended = false): readonly Capability[] {
    return this.capabilities().filter((c) => c.id === id && c.extended === extended);
  }

  write(width: Width, offset: number, value: number): void {
    // Range and alignment first, so a refusal below always names a real register.
    this.#access.read(width, offset);
    const refuse = (what: string, fix: string): never => {
      throw new UpciError('HOST_OWNED', `config space: a ${width}-byte write at ${hex(offset)} reaches ${what}, which a driver may not write`, fix);
    };
    const end = offset + width;
    const overlaps = (from: number, to: number) => offset < to && end > from;
    if (offset < 0x40) {
      for (const [from, to, what, fix] of HEADER_NAMES) if (overlaps(from, to)) refuse(what, fix);
      for (let at = offset; at < Math.min(end, 0x40); at++) {
        if (!WRITABLE_HEADER.has(at)) refuse(`header byte ${hex(at)}`, 'of the header only the command and status registers, the cache line size and the latency timer are a driver\'s');
      }
      if (overlaps(PCI_COMMAND, PCI_COMMAND + 2)) this.#checkCommand(width, offset, value, refuse);
    }
    for (const cap of this.capabilities()) {
      const kernelBytes = cap.extended ? undefined : this.#kernelBytes(cap);
      if (kernelBytes !== undefined && overlaps(cap.offset, cap.offset + kernelBytes)) {
        refuse(`the ${cap.name} capability at ${hex(cap.offset)}`, 'interrupts are the kernel\'s: use establishInterrupts()');
      }
      if (overlaps(cap.offset, cap.offset + (cap.extended ? 4 : 2))) {
        refuse(`the ${cap.name} capability's header (id and next pointer) at ${hex(cap.offset)}`, 'write the capability\'s registers, after its header');
      }
    }
    this.#access.write(width, offset, value);
  }

  /** How many bytes of `cap` are the kernel's: the whole of an MSI (its length set by its form) or MSI-X capability. */
  #kernelBytes(cap: Capability): number | undefined {
    if (cap.id === CAP_MSIX) return 12;
    if (cap.id !== CAP_MSI) return undefined;
    const msi = decodeMsi(this.#access, cap.offset);
    return (msi.address64 ? 14 : 10) + (msi.perVectorMasking ? 10 : 0);
  }

  /** A write reaching the command register must leave the bus-master and INTx-disable bits as they are. */
  #checkCommand(width: Width, offset: number, value: number, refuse: (what: string, fix: string) => never): void {
    const current = this.#access.read(2, PCI_COMMAND);
    const next = width === 1
      ? (offset === PCI_COMMAND ? (current & 0xff00) | (value & 0xff) : (current & 0x00ff) | ((value & 0xff) << 8))
      : value & 0xffff;
    const changed = (next ^ current) & HOST_COMMAND_BITS;
    if (changed & PCI_COMMAND_MASTER) refuse('the command register\'s bus-master bit', 'bus mastering is the host\'s: use dma().enableBusMaster() / disableBusMaster()');
    if (changed !== 0) refuse('the command register\'s INTx-disable bit', 'interrupts are the kernel\'s: use establishInterrupts()');
  }
}
