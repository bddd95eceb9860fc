/**
 * A kernel port that records, in order, the calls upci makes that stop or
 * give back a device (reset, interrupts disabled, DMA unmapped,
 * close), each with whether the device's bus mastering was on at that
 * moment. The kernel clears bus mastering itself when the last fd closes
 * (vfio_pci_core_disable), so a check made after close() passes whatever
 * upci did; these records are taken while the fd is still open.
 */
import type { DeviceFile, DmaDomain, DmaWindow, KernelPort } from '../../kernel/port.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../pci/config.js';

const CONFIG_REGION = 7;

/** "0000:00:04.0 close (bus master off)" and the like. */
export type PortRecord = string;

/** Whether the function's bus mastering is on, from a source other than upci's own shadow. */
export type BusMasterProbe = (file: DeviceFile) => boolean;

/** Reads the command register through the device's own, still open, fd. */
export const throughTheFd: BusMasterProbe = (file) => {
  const buf = Buffer.alloc(2);
  file.readRegion(CONFIG_REGION, PCI_COMMAND, buf);
  return (buf.readUInt16LE(0) & PCI_COMMAND_MASTER) !== 0;
};

/** `target` with calls of `names` announced to `before` (then made); every other property as it is. */
function announcing<T extends object>(target: T, names: readonly string[], before: (name: string, args: unknown[]) => void, extra: (name: string | symbol) => unknown = () => undefined): T {
  return new Proxy(target, {
    get(t, name) {
      const replaced = extra(name);
      if (replaced !== undefined) return replaced;
      const value: unknown = Reflect.get(t, name, t);
      if (typeof value !== 'function') return value;
      const method = value as (...args: unknown[]) => unknown;
      if (typeof name !== 'string' || !names.includes(name)) return method.bind(t);
      return (...args: unknown[]) => {
        before(name, args);
        return method.apply(t, args);
      };
    },
  });
}

export interface RecordingOptions {
  /**
   * Also record "bus master off" when a config write clears PCI_COMMAND's
   * bus master bit (it was set before), so that the order of the whole
   * quiesce shows, not only the calls after it. Off by default: the VM
   * suites compare whole record lists without it.
   */
  readonly busMasterWrites?: boolean;
}

/** `file` with its teardown calls recorded into `sink` before they reach the kernel. */
export function recordingFile(file: DeviceFile, sink: (record: PortRecord) => void, probe: BusMasterProbe = throughTheFd, options: RecordingOptions = {}): DeviceFile {
  let closed = false;
  const state = () => {
    try {
      return probe(file) ? 'on' : 'off';
    } catch (e) {
      return `unreadable: ${(e as Error).message}`;
    }
  };
  const note = (op: string) => sink(closed ? `${file.address} ${op} (after close)` : `${file.address} ${op} (bus master ${state()})`);
  // A window's unmap is how the host takes DMA back from a driver thread (DmaDomain.reserveWindow).
  const recordedWindow = (window: DmaWindow): DmaWindow => announcing(window, ['unmap', 'release'], (op) => note(`dma ${op} window`));
  let dma: DmaDomain | undefined;
  const extra = (name: string | symbol): unknown => {
    if (name === 'dma') {
      return (dma ??= announcing(file.dma, ['unmap'], (op) => note(`dma ${op}`), (n) => (n === 'reserveWindow' ? () => recordedWindow(file.dma.reserveWindow()) : undefined)));
    }
    if (name === 'writeRegion' && options.busMasterWrites === true) {
      return (index: number, offset: number, buf: Buffer) => {
        const before = closed ? undefined : state();
        file.writeRegion(index, offset, buf);
        if (index === CONFIG_REGION && before === 'on' && state() === 'off') sink(`${file.address} bus master off`);
      };
    }
    return undefined;
  };
  return announcing(file, ['reset', 'disableIrqs', 'close'], (name, args) => {
    note(name === 'disableIrqs' ? `disableIrqs ${String(args[0])}` : name);
    if (name === 'close') closed = true;
  }, extra);
}

/** A port whose every opened file records into `records`. */
export function recordingPort(inner: KernelPort, records: PortRecord[], probe?: BusMasterProbe, options?: RecordingOptions): KernelPort {
  return { name: `${inner.name} (recorded)`, open: (address) => recordingFile(inner.open(address), (r) => records.push(r), probe, options) };
}

/** `address`'s resets and closes among `records`, in order: each says bus master off if upci's quiesce came first. */
export function resetsAndCloses(records: readonly PortRecord[], address: string): PortRecord[] {
  return records.filter((r) => r.startsWith(`${address} reset `) || r.startsWith(`${address} close `));
}

/**
 * What `address`'s first take-back did to its DMA before the fd closed: the
 * driver thread's window unmapped (every mapping in it, whichever thread
 * made it) and released, each with bus mastering's state at the time.
 */
export function firstTakeBackDma(records: readonly PortRecord[], address: string): PortRecord[] {
  const mine = records.filter((r) => r.startsWith(`${address} `));
  const close = mine.findIndex((r) => r.startsWith(`${address} close `));
  return mine.slice(0, close < 0 ? mine.length : close).filter((r) => r.startsWith(`${address} dma `));
}
