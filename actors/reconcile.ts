/**
 * The one reconciler of the host's device set: what the config wants
 * (its entries) against what is there (the PCI functions the watcher sees)
 * and what the host holds (its device actors). Everything that changes the
 * set goes through it: the start, a device that appears, is bound or goes
 * away, a device actor that ends, and a config reload (SIGHUP). It is a
 * pure function: the host carries its steps out.
 *
 * Which entry wants a device: the address entry naming it, else the first
 * match entry (in file order) it fits; a named match entry takes one device
 * at a time (the one it holds, else the lowest address).
 */
import type { PciAddress } from '../kernel/pci-address.js';
import type { PresentDevice } from '../pci/device-watcher.js';
import type { DeviceEntry, EntryMatch } from './config.js';

/** A device the host holds: the identity of the entry it was claimed for. */
export interface HeldDevice {
  readonly address: PciAddress;
  /** entryIdentity() of the entry it was claimed for, as it was then. */
  readonly identity: string;
}

export type Step =
  /** Claim the device for the entry (it is bound to vfio-pci). */
  | { readonly kind: 'claim'; readonly address: PciAddress; readonly entry: DeviceEntry }
  /** Hand it to vfio-pci first (the entry allows it), then claim it. */
  | { readonly kind: 'bind'; readonly address: PciAddress; readonly entry: DeviceEntry }
  /** Wanted, but bound to another driver (or none) and the entry does not allow binding: said once. */
  | { readonly kind: 'unbound'; readonly address: PciAddress; readonly entry: DeviceEntry; readonly driver: string | undefined }
  /** Held, but no entry wants it any more: release it. */
  | { readonly kind: 'release'; readonly address: PciAddress }
  /** Held for an entry that changed (or another entry wants it now): release it; once released it is claimed again. */
  | { readonly kind: 'restart'; readonly address: PciAddress; readonly entry: DeviceEntry };

export function matchesEntry(match: EntryMatch, d: PresentDevice): boolean {
  return (match.vendor === undefined || match.vendor === d.vendor)
    && (match.device === undefined || match.device === d.device)
    && (match.classPrefix === undefined || d.classCode.toString(16).padStart(6, '0').startsWith(match.classPrefix))
    && (match.subsystemVendor === undefined || match.subsystemVendor === d.subsystemVendor)
    && (match.subsystemDevice === undefined || match.subsystemDevice === d.subsystemDevice)
    && (match.slot === undefined || match.slot === d.slot);
}

/**
 * What identifies an entry as it is: two entries with the same identity
 * give a device the same driver, options and supervision, so a reload
 * leaves such a device alone; any change restarts it. Not its place in the
 * file: moving an entry changes nothing.
 */
export function entryIdentity(entry: DeviceEntry): string {
  const { choice } = entry;
  return JSON.stringify({
    address: entry.address,
    match: entry.match,
    name: entry.name,
    bind: entry.bind,
    driver: choice.kind === 'named' ? choice.driver.name : undefined,
    options: choice.options,
    supervision: entry.supervision,
  });
}

/** Which entry wants each present device (address entries first, then match entries in order). */
export function assign(entries: readonly DeviceEntry[], present: readonly PresentDevice[], held: ReadonlyMap<PciAddress, HeldDevice>): Map<PciAddress, DeviceEntry> {
  const wanted = new Map<PciAddress, DeviceEntry>();
  const byAddress = new Map(entries.flatMap((e) => (e.address === undefined ? [] : [[e.address, e] as const])));
  for (const d of present) {
    const entry = byAddress.get(d.address);
    if (entry !== undefined) wanted.set(d.address, entry);
  }
  const sorted = [...present].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  for (const entry of entries) {
    if (entry.match === undefined) continue;
    const fits = sorted.filter((d) => !wanted.has(d.address) && matchesEntry(entry.match, d));
    if (entry.name === undefined) {
      for (const d of fits) wanted.set(d.address, entry);
      continue;
    }
    // A named entry: the device it already holds keeps the name; else the first that fits.
    const identity = entryIdentity(entry);
    const chosen = fits.find((d) => held.get(d.address)?.identity === identity) ?? fits[0];
    if (chosen !== undefined) wanted.set(chosen.address, entry);
  }
  return wanted;
}

/**
 * The steps from what is held to what is wanted. `withdrawn`: devices the
 * kernel took back (device request) that must be left alone until they are
 * gone or bound to vfio-pci again; `failed`: devices whose last claim or
 * bind failed for the entry of that identity (not tried again until the
 * device or the entry changes).
 */
export function plan(
  entries: readonly DeviceEntry[],
  present: readonly PresentDevice[],
  held: ReadonlyMap<PciAddress, HeldDevice>,
  withdrawn: ReadonlySet<PciAddress>,
  failed: ReadonlyMap<PciAddress, string>,
): Step[] {
  const wanted = assign(entries, present, held);
  const steps: Step[] = [];
  for (const h of held.values()) {
    const entry = wanted.get(h.address);
    if (entry === undefined) {
      // A held device the watcher no longer lists is on its way out through the kernel's device request.
      if (present.some((d) => d.address === h.address) || !entries.some((e) => entryIdentity(e) === h.identity)) steps.push({ kind: 'release', address: h.address });
    } else if (entryIdentity(entry) !== h.identity) {
      steps.push({ kind: 'restart', address: h.address, entry });
    }
  }
  for (const d of present) {
    const entry = wanted.get(d.address);
    if (entry === undefined || held.has(d.address) || withdrawn.has(d.address)) continue;
    if (failed.get(d.address) === entryIdentity(entry)) continue;
    if (d.driver === 'vfio-pci') steps.push({ kind: 'claim', address: d.address, entry });
    else if (entry.bind) steps.push({ kind: 'bind', address: d.address, entry });
    else steps.push({ kind: 'unbound', address: d.address, entry, driver: d.driver });
  }
  return steps;
}
