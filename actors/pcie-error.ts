/**
 * The cause of an uncorrectable PCIe error, for the fault the host reports:
 * VFIO's ERR eventfd says only that there was one, so the errors are named
 * from what the kernel's AER driver counted for the function (by status bit
 * and severity) since the last report.
 */
import type { PcieErrorCount } from '../kernel/port.js';

/** e.g. `UnsupReq (nonfatal)`, `CmpltTO (nonfatal) x2, MalfTLP (fatal)`, or why none can be named. */
export function pcieErrorCause(before: readonly PcieErrorCount[] | undefined, now: readonly PcieErrorCount[] | undefined): string {
  if (now === undefined) return 'the kernel keeps no AER counts for the device, so the error cannot be named';
  const grown = now.flatMap((c) => {
    const was = before?.find((b) => b.name === c.name && b.severity === c.severity)?.count ?? 0;
    return c.count > was ? [`${c.name} (${c.severity})${c.count - was > 1 ? ` x${c.count - was}` : ''}`] : [];
  });
  return grown.length === 0 ? 'the kernel\'s AER counts name no new error' : grown.join(', ');
}
