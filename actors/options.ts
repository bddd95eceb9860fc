/** Validates a driver's options against its schema, filling in defaults. */
import type { OptionsOf, OptionsSchema, OptionSpec } from '../drivers/contract.js';
import { ConfigError, describe } from './config-error.js';

function checkValue(spec: OptionSpec, value: unknown, path: string): unknown {
  switch (spec.type) {
    case 'integer':
      if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw new ConfigError(path, `expected integer, got ${describe(value)}`, { fix: spec.doc });
      if (spec.min !== undefined && value < spec.min) throw new ConfigError(path, `${value} is below the minimum ${spec.min}`, { fix: spec.doc });
      if (spec.max !== undefined && value > spec.max) throw new ConfigError(path, `${value} is above the maximum ${spec.max}`, { fix: spec.doc });
      return value;
    case 'boolean':
      if (typeof value !== 'boolean') throw new ConfigError(path, `expected boolean, got ${describe(value)}`, { fix: spec.doc });
      return value;
    case 'enum':
      if (typeof value !== 'string' || !spec.values.includes(value)) {
        throw new ConfigError(path, `expected one of ${spec.values.map((v) => JSON.stringify(v)).join(', ')}, got ${describe(value)}`, { fix: spec.doc });
      }
      return value;
  }
}

export function validateOptions<S extends OptionsSchema>(schema: S, value: unknown, path: string): OptionsOf<S> {
  const given = value ?? {};
  if (typeof given !== 'object' || Array.isArray(given) || given === null) throw new ConfigError(path, `expected an object, got ${describe(value)}`);
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(given)) {
    const spec = schema[key];
    if (spec === undefined) {
      const known = Object.keys(schema);
      throw new ConfigError(`${path}.${key}`, 'unknown option', { fix: known.length > 0 ? `this driver's options are ${known.join(', ')}` : 'this driver takes no options' });
    }
    out[key] = checkValue(spec, v, `${path}.${key}`);
  }
  for (const [key, spec] of Object.entries(schema)) {
    if (!(key in out) && spec.default !== undefined) out[key] = spec.default;
  }
  return out as OptionsOf<S>;
}
