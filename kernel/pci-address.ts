import { UpciError } from './errors.js';

/** A PCI function's geographic address, always in canonical DDDD:BB:SS.F form. */
export type PciAddress = string & { readonly __brand: 'PciAddress' };

const FULL = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$/;
const SHORT = /^([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$/;

/** Accepts DDDD:BB:SS.F or BB:SS.F (domain 0), case-insensitive. */
export function parsePciAddress(text: string): PciAddress {
  const lower = text.trim().toLowerCase();
  if (FULL.test(lower)) return lower as PciAddress;
  if (SHORT.test(lower)) return `0000:${lower}` as PciAddress;
  throw new UpciError(
    'BAD_ADDRESS',
    `"${text}" is not a PCI address`,
    'write it as DDDD:BB:SS.F or BB:SS.F, e.g. 0000:00:04.0 (slot 00-1f, function 0-7); `upci list` shows the addresses',
  );
}

export function pciAddressParts(address: PciAddress): { domain: number; bus: number; slot: number; func: number } {
  const m = FULL.exec(address)!;
  return { domain: parseInt(m[1]!, 16), bus: parseInt(m[2]!, 16), slot: parseInt(m[3]!, 16), func: parseInt(m[4]!, 16) };
}
