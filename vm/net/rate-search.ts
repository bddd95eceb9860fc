/**
 * The highest rate a path carries without loss, found with short probe
 * bursts instead of one long run per candidate. A probe passes when every
 * frame arrived once, intact and in order **and** the receiver kept pace
 * (its rate over the burst at least `keepPace` of the sender's): a burst
 * that fits in the receive ring can be absorbed whole by a receiver that
 * could never sustain it, and a long run at that rate would overflow. The
 * rate asked doubles from `start` until a probe fails (or the sender cannot
 * go faster: it achieved under `keepPace` of the rate asked), halves below
 * `start` until one passes, then bisects between the last pass and the
 * first failure `steps` times. The answer is what the sender achieved in
 * the best passing probe, not what was asked of it.
 */

export interface ProbeResult {
  /** Every frame once, intact, in order. */
  readonly lossless: boolean;
  /** Frames per second the sender achieved over the burst. */
  readonly sent: number;
  /** Frames per second the receiver saw, first frame to last. */
  readonly received: number;
  /** What the probe saw, for the log. */
  readonly detail: string;
}

export interface Probe {
  readonly asked: number;
  readonly result: ProbeResult;
  readonly passed: boolean;
}

export interface RateSearchOptions {
  /** Frames per second of the first probe. */
  readonly start: number;
  /** Below this a failing probe ends the search with an error. */
  readonly floor: number;
  /** No probe asks for more. */
  readonly ceiling: number;
  /** Bisections between the last pass and the first failure. */
  readonly steps: number;
  /** The fraction of the sender's rate the receiver must reach, and of the asked rate the sender. */
  readonly keepPace: number;
}

export interface RateSearch {
  /** The highest lossless rate, frames per second: what the sender achieved in the best passing probe. */
  readonly rate: number;
  /** The probe that found it. */
  readonly best: Probe;
  /** Why no higher rate: a probe above it failed, the sender could go no faster, or the ceiling. */
  readonly limit: 'loss' | 'sender' | 'ceiling';
  readonly probes: readonly Probe[];
}

export const defaultRateSearch: RateSearchOptions = { start: 2000, floor: 250, ceiling: 64_000, steps: 3, keepPace: 0.9 };

export async function findLosslessRate(probe: (perSecond: number) => Promise<ProbeResult>, options: RateSearchOptions = defaultRateSearch): Promise<RateSearch> {
  const { start, floor, ceiling, steps, keepPace } = options;
  const probes: Probe[] = [];
  const run = async (asked: number): Promise<Probe> => {
    const result = await probe(asked);
    const p = { asked, result, passed: result.lossless && result.received >= keepPace * result.sent };
    probes.push(p);
    return p;
  };
  const saturated = (p: Probe) => p.result.sent < keepPace * p.asked;

  /** The asked rates of the last probe that passed and of the first that failed. */
  let good: number | undefined;
  let bad: number | undefined;
  /** The passing probe whose sender went fastest. */
  let best: Probe | undefined;
  const found = (limit: RateSearch['limit']): RateSearch => ({ rate: best!.result.sent, best: best!, limit, probes });
  const step = async (asked: number): Promise<Probe> => {
    const p = await run(asked);
    if (p.passed) {
      good = asked;
      if (best === undefined || p.result.sent > best.result.sent) best = p;
    } else {
      bad ??= asked;
      if (asked < bad) bad = asked;
    }
    return p;
  };
  let asked = start;
  for (;;) {
    const p = await step(asked);
    if (good !== undefined && bad !== undefined) break;
    if (p.passed) {
      if (saturated(p)) return found('sender');
      if (asked >= ceiling) return found('ceiling');
      asked = Math.min(ceiling, asked * 2);
    } else {
      asked /= 2;
      if (asked < floor) {
        throw new Error(`rate search: even ${Math.round(p.asked)} frames per second failed (${p.result.detail}); nothing passes at or above ${floor}`);
      }
    }
  }
  for (let i = 0; i < steps; i++) await step(Math.round((good! + bad!) / 2));
  return found('loss');
}
