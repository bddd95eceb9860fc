/**
 * Teardown that never stops half-way: every step runs even when an earlier
 * one throws (a device left with bus mastering on, or memory left mapped, is
 * worse than a second error), and the failures are thrown together.
 */
export function runEvery(what: string, steps: Iterable<() => void>): void {
  const errors: unknown[] = [];
  for (const step of steps) {
    try {
      step();
    } catch (e) {
      errors.push(e);
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new AggregateError(errors, `${what}: ${errors.length} steps failed`);
}

type Step = () => void;

/** What stopping a device takes, by kind: quiesce() runs them in its one order. */
export interface QuiesceSteps {
  /** Turns the device's bus mastering off. */
  readonly busMaster?: Step;
  /** Disables its interrupt vectors in the kernel. */
  readonly interrupts?: readonly Step[];
  /** Removes its DMA mappings from the IOMMU (and frees what they mapped). */
  readonly dma?: readonly Step[];
  /** Revokes its BAR mappings. */
  readonly bars?: readonly Step[];
}

/**
 * The one order in which upci stops a device, wherever it is stopped
 * (PciDevice.close, a driver's DriverBus.release, the main thread taking a
 * device back from a driver thread): bus mastering off first, so that no
 * DMA and no MSI (itself a DMA write) can leave the device; then its
 * interrupts off; then its DMA mappings gone from the IOMMU, which the
 * device can no longer use; then its BAR mappings revoked. `first` runs
 * before all of it (a driver's own release hooks, which may still use the
 * device), `last` after (closing the kernel handle). Every step runs even
 * if an earlier one failed (runEvery).
 */
export function quiesce(what: string, steps: QuiesceSteps, around: { readonly first?: readonly Step[]; readonly last?: readonly Step[] } = {}): void {
  runEvery(what, [
    ...(around.first ?? []),
    ...(steps.busMaster === undefined ? [] : [steps.busMaster]),
    ...(steps.interrupts ?? []),
    ...(steps.dma ?? []),
    ...(steps.bars ?? []),
    ...(around.last ?? []),
  ]);
}
