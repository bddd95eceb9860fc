/**
 * Layouts and constants as clang computes them for x86_64-unknown-netbsd,
 * without a NetBSD sysroot: the C is compiled to assembly (freestanding,
 * clang's own stddef.h/stdint.h) and never run; each
 * `const unsigned long name = expr;` global is read back from its `.quad`.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FieldType, Struct } from '../../kernel/abi.js';

export const NETBSD_TARGET = 'x86_64-unknown-netbsd';

export function netbsdConstants(source: string, flags: string[] = []): Record<string, number> {
  const dir = mkdtempSync(join(tmpdir(), 'upci-netbsd-probe-'));
  try {
    writeFileSync(join(dir, 'probe.c'), source);
    const asm = execFileSync('clang', [`--target=${NETBSD_TARGET}`, '-ffreestanding', '-nostdlibinc', ...flags, '-S', '-o', '-', join(dir, 'probe.c')], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    return Object.fromEntries([...asm.matchAll(/^(\w+):\s*\n\s*\.quad\s+(\d+)/gm)].map((m) => [m[1]!, Number(m[2])]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

type AnyStruct = Struct<Record<string, FieldType>>;

/** Globals holding sizeof and each offsetof of `structs` (which the source must declare before them). */
export function layoutGlobals(structs: readonly AnyStruct[]): string {
  return structs.map((s, i) => [
    `const unsigned long upci_s${i}_size = sizeof(struct ${s.cName});`,
    ...Object.keys(s.fields).map((f, j) => `const unsigned long upci_s${i}_f${j} = __builtin_offsetof(struct ${s.cName}, ${f});`),
  ].join('\n')).join('\n');
}

/** The globals of layoutGlobals() in the shape of c-probe.ts's expectedLayout(). */
export function layoutFrom(structs: readonly AnyStruct[], values: Record<string, number>): unknown {
  return Object.fromEntries(structs.map((s, i) => [
    s.cName,
    { size: values[`upci_s${i}_size`], fields: Object.fromEntries(Object.keys(s.fields).map((f, j) => [f, values[`upci_s${i}_f${j}`]])) },
  ]));
}
