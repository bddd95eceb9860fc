/** bus_dma's refusals: a request its tag cannot satisfy, and use of what was released. */
import { UpciError } from '../kernel/errors.js';

export type DmaConstraint = 'alignment' | 'boundary' | 'maxSegmentSize' | 'maxSegments' | 'addressLimit' | 'maxSize' | 'pageAlignment' | 'range';

/**
 * A request that cannot satisfy a tag's constraints (or a bad tag). Code
 * OUT_OF_RANGE; `constraint` says which rule it broke.
 */
export class DmaConstraintError extends UpciError {
  constructor(
    readonly constraint: DmaConstraint,
    message: string,
    fix?: string,
  ) {
    super('OUT_OF_RANGE', `bus_dma: ${message}`, fix);
  }
}

export function released(what: string): UpciError {
  return new UpciError('RELEASED', `bus_dma: ${what}`);
}

export const hex = (v: bigint | number) => `0x${v.toString(16)}`;
