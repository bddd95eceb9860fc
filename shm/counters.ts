/**
 * Counters in shared memory: one thread increments them as plain object
 * properties (`counters.rx.frames++`), another reads them at any time, with
 * no message. Each counter is an accessor onto one Float64Array slot (exact
 * up to 2^53), grouped as the layout names them.
 *
 *   const block = createCounters({ rx: ['frames', 'bytes'], tx: ['frames'] });
 *   block.counters.rx.frames++;                       // in the writer's thread
 *   countersOf(block.buffer, layout).rx.frames        // the same counter, elsewhere
 */

/** Counter names by group. */
export type CounterLayout = Readonly<Record<string, readonly string[]>>;

export type Counters<L extends CounterLayout> = { readonly [G in keyof L]: Record<L[G][number], number> };

export interface CounterBlock<L extends CounterLayout> {
  readonly buffer: SharedArrayBuffer;
  readonly counters: Counters<L>;
}

const size = (layout: CounterLayout) => Object.values(layout).reduce((n, names) => n + names.length, 0);

/** Zeroed counters for `layout`. */
export function createCounters<L extends CounterLayout>(layout: L): CounterBlock<L> {
  const buffer = new SharedArrayBuffer(8 * size(layout));
  return { buffer, counters: countersOf(buffer, layout) };
}

/** The counters of a block made by createCounters with the same layout (in any thread). */
export function countersOf<L extends CounterLayout>(buffer: SharedArrayBuffer, layout: L): Counters<L> {
  if (buffer.byteLength !== 8 * size(layout)) throw new Error(`a counter block of ${buffer.byteLength} bytes does not hold the ${size(layout)} counters of its layout`);
  const values = new Float64Array(buffer);
  let slot = 0;
  const groups: Record<string, Record<string, number>> = {};
  for (const [group, names] of Object.entries(layout)) {
    const counters = {};
    for (const name of names) {
      const at = slot++;
      Object.defineProperty(counters, name, { enumerable: true, get: () => values[at]!, set: (v: number) => void (values[at] = v) });
    }
    groups[group] = counters;
  }
  return groups as Counters<L>;
}
