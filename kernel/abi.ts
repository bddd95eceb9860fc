/**
 * C struct layouts described once (field names are C member designators,
 * e.g. `header.id` for a nested member), used for both encoding ioctl arguments and
 * checking them against the real C headers in tests (test/unit/abi.test.ts
 * compiles offsetof/sizeof probes generated from these same descriptions).
 */
export type FieldType = 'u8' | 'u16' | 'u32' | 'u64';

const SIZE: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

type FieldValue<T extends FieldType> = T extends 'u64' ? bigint : number;

export interface Field { readonly offset: number; readonly type: FieldType }

export class Struct<F extends Record<string, FieldType>> {
  readonly fields: { readonly [K in keyof F]: Field };
  readonly size: number;

  /** Lays fields out in order with natural alignment, as the C ABIs upci targets do. */
  constructor(readonly cName: string, spec: F) {
    let offset = 0;
    let align = 1;
    const fields = {} as Record<string, Field>;
    for (const [name, type] of Object.entries(spec)) {
      const size = SIZE[type];
      offset = Math.ceil(offset / size) * size;
      fields[name] = { offset, type };
      offset += size;
      align = Math.max(align, size);
    }
    this.fields = fields as { [K in keyof F]: Field };
    this.size = Math.ceil(offset / align) * align;
  }

  /** A zeroed buffer of `size + extra` bytes with `argsz` filled in when the struct has one. */
  alloc(extra = 0): Buffer {
    const buf = Buffer.alloc(this.size + extra);
    if ('argsz' in this.fields) this.set(buf, 'argsz' as keyof F, buf.length as FieldValue<F[keyof F]>);
    return buf;
  }

  get<K extends keyof F>(buf: Buffer, name: K, base = 0): FieldValue<F[K]> {
    const { offset, type } = this.fields[name];
    const at = base + offset;
    switch (type) {
      case 'u8': return buf.readUInt8(at) as FieldValue<F[K]>;
      case 'u16': return buf.readUInt16LE(at) as FieldValue<F[K]>;
      case 'u32': return buf.readUInt32LE(at) as FieldValue<F[K]>;
      case 'u64': return buf.readBigUInt64LE(at) as FieldValue<F[K]>;
    }
  }

  set<K extends keyof F>(buf: Buffer, name: K, value: FieldValue<F[K]>, base = 0): void {
    const { offset, type } = this.fields[name];
    const at = base + offset;
    switch (type) {
      case 'u8': buf.writeUInt8(value as number, at); break;
      case 'u16': buf.writeUInt16LE(value as number, at); break;
      case 'u32': buf.writeUInt32LE(value as number, at); break;
      case 'u64': buf.writeBigUInt64LE(value as bigint, at); break;
    }
  }

  /** A buffer holding the given field values (the rest zero, argsz set). */
  encode(values: Partial<{ [K in keyof F]: FieldValue<F[K]> }>, extra = 0): Buffer {
    const buf = this.alloc(extra);
    for (const [name, value] of Object.entries(values)) this.set(buf, name as keyof F, value as FieldValue<F[keyof F]>);
    return buf;
  }
}

