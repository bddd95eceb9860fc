/** The pieces every part of the host config's validation is built from: each problem a ConfigError naming its key. */
import { ConfigError, describe } from './config-error.js';

export type Json = Record<string, unknown>;

export function object(value: unknown, path: string): Json {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ConfigError(path, `expected an object, got ${describe(value)}`);
  return value as Json;
}

/** The path of `key` inside `path` ('' is the root). */
export const at = (path: string, key: string) => (path === '' ? key : `${path}.${key}`);

export function onlyKeys(value: Json, path: string, allowed: readonly string[]): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) throw new ConfigError(at(path, key), 'unknown key', { fix: `allowed here: ${allowed.join(', ')}` });
  }
}

export function integer(value: unknown, path: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw new ConfigError(path, `expected integer, got ${describe(value)}`);
  if (value < min || value > max) throw new ConfigError(path, `${value} is outside ${min}..${max}`);
  return value;
}
