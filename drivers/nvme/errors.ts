/**
 * NVMe failures as typed errors: a controller's completion status (SCT/SC,
 * with its name when the spec gives one), a command that did not complete
 * in time, a request refused before it reached the controller, and requests
 * cut off by a reset or the driver's detach.
 */
import { BlockGoneError, crossesThreads } from '../block.js';

export { BlockRequestError } from '../block.js';

const GENERIC: Record<number, string> = {
  0x01: 'Invalid Command Opcode',
  0x02: 'Invalid Field in Command',
  0x03: 'Command ID Conflict',
  0x04: 'Data Transfer Error',
  0x05: 'Commands Aborted due to Power Loss Notification',
  0x06: 'Internal Error',
  0x07: 'Command Abort Requested',
  0x08: 'Command Aborted due to SQ Deletion',
  0x0b: 'Invalid Namespace or Format',
  0x0d: 'Invalid SGL Segment Descriptor',
  0x13: 'Invalid PRP Offset',
  0x80: 'LBA Out of Range',
  0x81: 'Capacity Exceeded',
  0x82: 'Namespace Not Ready',
};
const COMMAND_SPECIFIC: Record<number, string> = {
  0x00: 'Completion Queue Invalid',
  0x01: 'Invalid Queue Identifier',
  0x02: 'Invalid Queue Size',
  0x03: 'Abort Command Limit Exceeded',
  0x08: 'Invalid Interrupt Vector',
  0x0b: 'Invalid Namespace or Format',
  0x80: 'Conflicting Attributes',
};
const MEDIA: Record<number, string> = {
  0x80: 'Write Fault',
  0x81: 'Unrecovered Read Error',
  0x86: 'Access Denied',
};

export const SC_ABORT_REQUESTED = 0x07;

function statusName(sct: number, sc: number): string {
  const table = sct === 0 ? GENERIC : sct === 1 ? COMMAND_SPECIFIC : sct === 2 ? MEDIA : undefined;
  return table?.[sc] ?? `status code type ${sct}, status code 0x${sc.toString(16)}`;
}

/** The controller completed the command with a non-zero status. */
export class NvmeStatusError extends Error {
  override readonly name = 'NvmeStatusError';
  constructor(
    readonly command: string,
    /** Status Code Type: 0 generic, 1 command specific, 2 media and data integrity, 3 path. */
    readonly sct: number,
    /** Status Code. */
    readonly sc: number,
    /** Do Not Retry: the same command would fail again. */
    readonly dnr: boolean,
  ) {
    super(`nvme: ${command} failed: ${statusName(sct, sc)} (SCT ${sct}, SC 0x${sc.toString(16).padStart(2, '0')}${dnr ? ', do not retry' : ''})`);
  }
}

/** A command was not completed within the driver's command timeout, and the abort or reset that followed gave up. */
export class NvmeTimeoutError extends Error {
  override readonly name = 'NvmeTimeoutError';
  constructor(readonly command: string, readonly timeoutMs: number, detail: string) {
    super(`nvme: ${command} did not complete within ${timeoutMs} ms: ${detail}`);
  }
}

/** The request never reached the controller: the driver was detached or failed, or the controller is being reset. */
export class NvmeGoneError extends BlockGoneError {
  override readonly name: string = 'NvmeGoneError';
  constructor(readonly command: string, reason: string) {
    super(`nvme: ${command} did not complete: ${reason}`);
  }
}

// Across threads these arrive as themselves (services/block-service.ts), subclasses first.
crossesThreads('NvmeStatusError', {
  is: (e): e is NvmeStatusError => e instanceof NvmeStatusError,
  fields: (e) => [e.command, e.sct, e.sc, e.dnr],
  make: ([command, sct, sc, dnr]) => new NvmeStatusError(command as string, sct as number, sc as number, dnr as boolean),
});
crossesThreads('NvmeTimeoutError', {
  is: (e): e is NvmeTimeoutError => e instanceof NvmeTimeoutError,
  fields: (e) => [e.command, e.timeoutMs],
  make: ([command, timeoutMs]) => new NvmeTimeoutError(command as string, timeoutMs as number, ''),
});
crossesThreads('NvmeGoneError', {
  is: (e): e is NvmeGoneError => e instanceof NvmeGoneError,
  fields: (e) => [e.command],
  make: ([command]) => new NvmeGoneError(command as string, ''),
});
