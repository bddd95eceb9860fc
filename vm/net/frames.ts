/**
 * The test frames of the e1000e tests and benchmark (the layout vm/net/peer.c
 * documents): sequence-numbered, self-describing length, CRC-32 over the
 * pattern bytes, ethertype 0x88b5 (IEEE 802 local experimental).
 */
import { crc32 } from 'node:zlib';

export const ETHERTYPE_TEST = 0x88b5;
export const HEADER = 24;

export function macBytes(mac: string): Uint8Array {
  return Uint8Array.from(mac.split(':').map((b) => Number.parseInt(b, 16)));
}

/** Writes test frame `seq` of `length` bytes into `into` (at least `length` long). */
export function buildFrame(into: Uint8Array, dst: Uint8Array, src: Uint8Array, seq: number, length: number): Uint8Array {
  const f = into.subarray(0, length);
  f.set(dst, 0);
  f.set(src, 6);
  const v = new DataView(f.buffer, f.byteOffset, length);
  v.setUint16(12, ETHERTYPE_TEST);
  v.setUint32(14, seq >>> 0);
  v.setUint16(18, length);
  for (let i = HEADER; i < length; i++) f[i] = (seq * 7 + i) & 0xff;
  v.setUint32(20, crc32(f.subarray(HEADER)));
  return f;
}

export type FrameCheck = { kind: 'other' } | { kind: 'bad'; why: string } | { kind: 'ok'; seq: number; length: number };

/** Classifies a received frame: not a test frame, a damaged one, or frame `seq`. */
export function checkFrame(bytes: Uint8Array, length: number): FrameCheck {
  if (length < HEADER) return { kind: 'other' };
  const v = new DataView(bytes.buffer, bytes.byteOffset, length);
  if (v.getUint16(12) !== ETHERTYPE_TEST) return { kind: 'other' };
  const declared = v.getUint16(18);
  if (declared !== length) return { kind: 'bad', why: `length ${length}, the frame says ${declared}` };
  if (v.getUint32(20) !== crc32(bytes.subarray(HEADER, length))) return { kind: 'bad', why: 'CRC-32 mismatch' };
  return { kind: 'ok', seq: v.getUint32(14), length };
}

/**
 * The receiving side's bookkeeping, as vm/net/peer.c keeps it: each
 * sequence number below `count` counts once as `received`; again, it is a
 * duplicate; first seen after a higher one, it is also `reordered`.
 */
export class SequenceCheck {
  received = 0;
  frames = 0;
  bad = 0;
  other = 0;
  duplicates = 0;
  reordered = 0;
  beyond = 0;
  #next = 0;
  readonly #seen: Uint8Array;
  firstProblem: string | undefined;

  constructor(readonly count: number) {
    this.#seen = new Uint8Array(count);
  }

  add(check: FrameCheck): void {
    if (check.kind === 'other') {
      this.other++;
      return;
    }
    this.frames++;
    if (check.kind === 'bad') {
      this.bad++;
      this.firstProblem ??= `frame #${this.frames - 1}: ${check.why}`;
      return;
    }
    const { seq } = check;
    if (seq >= this.count) {
      this.beyond++;
      return;
    }
    if (this.#seen[seq]) {
      this.duplicates++;
      this.firstProblem ??= `seq ${seq} again`;
      return;
    }
    this.#seen[seq] = 1;
    this.received++;
    if (seq < this.#next) {
      this.reordered++;
      this.firstProblem ??= `seq ${seq} after ${this.#next - 1}`;
    } else {
      this.#next = seq + 1;
    }
  }
}
