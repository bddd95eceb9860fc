import { UpciError, type UpciErrorCode } from '../kernel/errors.js';

/**
 * A bad host config: the message starts with the path of the offending key
 * (`devices[1].options.failAfterInterrupts: expected integer, got "x"`).
 * Problems found while claiming a device keep the kernel's code (NOT_BOUND,
 * NO_DEVICE, BUSY...); schema problems have the code BAD_CONFIG.
 */
export class ConfigError extends UpciError {
  constructor(
    readonly path: string,
    problem: string,
    options: { fix?: string; code?: UpciErrorCode; cause?: unknown } = {},
  ) {
    super(options.code ?? 'BAD_CONFIG', `${path}: ${problem}`, options.fix, { cause: options.cause });
  }
}

/** How a bad value is shown: strings quoted, so `"5"` and `5` differ. */
export function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  return JSON.stringify(value);
}
