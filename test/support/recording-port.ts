/**
 * A kernel port that records, in order, the calls upci makes that stop or
 * give back a device (reset, interrupts disabled, DMA unmapped,
 * close), each with whether the device's bus mastering was on at that
 * moment. The kernel clears bus mastering itself when the last fd closes
 * (vfio_pci_core_disable), so a check made after close() passes whatever
 * upci did; these records are taken while the fd is still open.
 */
import type { DeviceFile, DmaDomain, KernelPort } from '../../kernel/port.js';
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

/** `file` with its teardown calls recorded into `sink` before they reach the kernel. */
export function recordingFile(file: DeviceFile, sink: (record: PortRecord) => void, probe: BusMasterProbe = throughTheFd): DeviceFile {
  let closed = false;
  const note = (op: string) => {
    if (closed) return sink(`${file.address} ${op} (after close)`);
    let state: string;
    try {
      state = probe(file) ? 'on' : 'off';
    } catch (e) {
      state = `unreadable: ${(e as Error).message}`;
    }
    sink(`${file.address} ${op} (bus master ${state})`);
  };
  let dma: DmaDomain | undefined;
  return announcing(file, ['reset', 'disableIrqs', 'close'], (name, args) => {
    note(name === 'disableIrqs' ? `disableIrqs ${String(args[0])}` : name);
    if (name === 'close') closed = true;
  }, (name) => (name === 'dma' ? (dma ??= announcing(file.dma, ['unmap'], (op) => note(`dma ${op}`))) : undefined));
}

/** A port whose every opened file records into `records`. */
export function recordingPort(inner: KernelPort, records: PortRecord[], probe?: BusMasterProbe): KernelPort {
  return { name: `${inner.name} (recorded)`, open: (address) => recordingFile(inner.open(address), (r) => records.push(r), probe) };
}
