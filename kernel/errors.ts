/**
 * Every failure a user can cause or fix is an UpciError: a stable code for
 * programs, a message that names the problem, and the fix for people.
 */
export type UpciErrorCode =
  | 'BAD_ADDRESS'
  | 'BAD_CONFIG'
  | 'NO_DEVICE'
  | 'NOT_BOUND'
  | 'NO_VFIO'
  | 'NO_IOMMU_GROUP'
  | 'GROUP_NOT_VIABLE'
  | 'PERMISSION'
  | 'BUSY'
  | 'OUT_OF_RANGE'
  | 'BAD_WIDTH'
  | 'RELEASED'
  | 'NOT_MAPPABLE'
  | 'NO_SUCH_REGION'
  | 'NO_MEMORY'
  | 'MEMLOCK'
  | 'NO_USER'
  | 'UNSUPPORTED'
  /** The device does not offer what was asked of it (an interrupt type, a number of vectors): asking again cannot help. */
  | 'NOT_OFFERED'
  /** A config-space register the host or the kernel keeps (bus mastering, BARs, MSI/MSI-X): a driver's write is refused. */
  | 'HOST_OWNED'
  | 'NO_UBLK'
  | 'KERNEL';

export class UpciError extends Error {
  override readonly name = 'UpciError';
  constructor(
    readonly code: UpciErrorCode,
    message: string,
    readonly fix?: string,
    options?: { cause?: unknown },
  ) {
    super(fix === undefined ? message : `${message}\n  fix: ${fix}`, options);
  }
}

/** A failed system call, with errno and the operation that failed. */
export class SyscallError extends UpciError {
  constructor(
    readonly operation: string,
    readonly errno: number,
    fix?: string,
  ) {
    super('KERNEL', `${operation} failed: ${errnoName(errno)} (errno ${errno})`, fix);
  }
}

const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 5: 'EIO', 9: 'EBADF', 11: 'EAGAIN', 12: 'ENOMEM',
  13: 'EACCES', 14: 'EFAULT', 16: 'EBUSY', 17: 'EEXIST', 19: 'ENODEV', 22: 'EINVAL',
  24: 'EMFILE', 25: 'ENOTTY', 28: 'ENOSPC', 95: 'EOPNOTSUPP',
};

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}
