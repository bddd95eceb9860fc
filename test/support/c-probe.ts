/**
 * Compiles and runs a tiny C program that prints JSON: how tests read
 * struct layouts and ioctl numbers from the real headers.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Struct, FieldType } from '../../kernel/abi.js';

export function runCProbe(source: string, compiler = 'cc', flags: string[] = []): unknown {
  const dir = mkdtempSync(join(tmpdir(), 'upci-probe-'));
  try {
    writeFileSync(join(dir, 'probe.c'), source);
    execFileSync(compiler, [...flags, '-o', join(dir, 'probe'), join(dir, 'probe.c')], { stdio: ['ignore', 'inherit', 'inherit'] });
    return JSON.parse(execFileSync(join(dir, 'probe'), { encoding: 'utf8' }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** C statements printing {"name": {"size": n, "fields": {"f": offset, ...}}, ...} for the given structs. */
export function layoutProbe(structs: readonly Struct<Record<string, FieldType>>[]): string {
  const entries = structs.map((s, i) => {
    const fields = Object.keys(s.fields)
      .map((f, j) => `printf("%s\\"${f}\\": %zu", ${j === 0 ? '""' : '", "'}, offsetof(struct ${s.cName}, ${f}));`)
      .join('\n  ');
    return `printf("%s\\"${s.cName}\\": {\\"size\\": %zu, \\"fields\\": {", ${i === 0 ? '""' : '", "'}, sizeof(struct ${s.cName}));\n  ${fields}\n  printf("}}");`;
  });
  return `printf("{");\n  ${entries.join('\n  ')}\n  printf("}\\n");`;
}

export function expectedLayout(structs: readonly Struct<Record<string, FieldType>>[]): unknown {
  return Object.fromEntries(structs.map((s) => [
    s.cName,
    { size: s.size, fields: Object.fromEntries(Object.entries(s.fields).map(([name, f]) => [name, f.offset])) },
  ]));
}
