/** Small statistics the runs share. Times are in milliseconds unless a name says otherwise. */
import { round } from './context.js';

export function median(values: readonly number[]): number {
  return quantile(values, 0.5);
}

/** The q-quantile by linear interpolation between closest ranks (NaN for no values). */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return quantileSorted(sorted, q);
}

export function quantileSorted(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = sorted[lo] ?? Number.NaN;
  const b = sorted[hi] ?? Number.NaN;
  return a + (b - a) * (pos - lo);
}

/**
 * The largest number of events in any half-open window `[t, t + windowMs)`, for sorted times.
 * Half-open because a limiter allowing n per window lets event n+1 start exactly one window
 * after event 1.
 */
export function maxInWindow(sortedTimes: readonly number[], windowMs: number): number {
  let best = 0;
  let lo = 0;
  for (let hi = 0; hi < sortedTimes.length; hi++) {
    const t = sortedTimes[hi] ?? 0;
    while ((sortedTimes[lo] ?? 0) <= t - windowMs) lo++;
    best = Math.max(best, hi - lo + 1);
  }
  return best;
}

/** The smallest gap between consecutive sorted times. */
export function minGap(sortedTimes: readonly number[]): number {
  let best = Number.POSITIVE_INFINITY;
  for (let i = 1; i < sortedTimes.length; i++) {
    best = Math.min(best, (sortedTimes[i] ?? 0) - (sortedTimes[i - 1] ?? 0));
  }
  return best;
}

/** Requests per second between the first and the last of sorted start times. */
export function achievedRate(sortedTimes: readonly number[]): number {
  if (sortedTimes.length < 2) return 0;
  const span = (sortedTimes.at(-1) ?? 0) - (sortedTimes[0] ?? 0);
  return ((sortedTimes.length - 1) * 1000) / span;
}

/**
 * A quantile of a Prometheus histogram in exposition text, interpolated within the bucket as
 * PromQL's `histogram_quantile` does. Returns undefined when the histogram is absent or empty.
 */
export function histogramQuantile(
  text: string,
  name: string,
  q: number,
  /** An earlier scrape: only the observations made since then count. */
  since?: string,
): number | undefined {
  const buckets: { le: number; count: number }[] = [];
  const re = new RegExp(`^${name}_bucket\\{[^}]*le="([^"]+)"[^}]*\\}\\s+(\\S+)`, 'gm');
  const before = new Map<string, number>();
  for (const m of since?.matchAll(re) ?? []) before.set(m[1] ?? '', Number(m[2]));
  for (const m of text.matchAll(re)) {
    const le = m[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(m[1]);
    buckets.push({ le, count: Number(m[2]) - (before.get(m[1] ?? '') ?? 0) });
  }
  buckets.sort((a, b) => a.le - b.le);
  const total = buckets.at(-1)?.count ?? 0;
  if (total === 0) return undefined;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const { le, count } of buckets) {
    if (count >= rank) {
      if (le === Number.POSITIVE_INFINITY) return prevLe;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(count - prevCount, 1);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/** The value of an unlabelled gauge or counter sample in exposition text. */
export function metricValue(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})?\\s+(\\S+)`, 'm').exec(text);
  return m?.[1] === undefined ? undefined : Number(m[1]);
}

/** The two figures of "never more than perSecond starts in any sliding second" for a run. */
export interface SecondStats {
  maxInAnySecond: number;
  minGapMs: number;
}

/** `SecondStats` of sorted arrival times (ms); the gap rounded to 0.01 ms. */
export function secondStats(sortedTimes: readonly number[]): SecondStats {
  return {
    maxInAnySecond: maxInWindow(sortedTimes, 1000),
    minGapMs: round(minGap(sortedTimes)),
  };
}
