/**
 * What Linux takes as a network interface name (IFNAMSIZ, and the
 * characters that need no quoting anywhere a user types them), checked
 * where a name is given: the config and the TAP ioctl.
 */

/** struct ifreq's name field, its NUL included. */
export const IFNAMSIZ = 16;

/** Why `name` is no interface name, or undefined when it is one. */
export function interfaceNameProblem(name: string): string | undefined {
  if (Buffer.byteLength(name) >= IFNAMSIZ || !/^[A-Za-z0-9_.-]+$/.test(name)) return `'${name}' is not an interface name`;
  return undefined;
}

export const INTERFACE_NAME_FIX = `use 1 to ${IFNAMSIZ - 1} letters, digits, '.', '-' or '_'`;
