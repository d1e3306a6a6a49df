/**
 * Measurements over a record of start (or arrival) times, as the pacing tests and the bench make
 * them. Times are numbers in one unit (ms or µs); `length` is in the same unit.
 */

/** Most times in any half-open interval `[t, t + length)`; `times` sorted ascending. */
export function maxInSliding(times: readonly number[], length: number): number {
  let most = 0;
  let lo = 0;
  for (let hi = 0; hi < times.length; hi++) {
    while ((times[hi] ?? 0) - (times[lo] ?? 0) >= length) lo++;
    most = Math.max(most, hi - lo + 1);
  }
  return most;
}

/** Differences between consecutive times; `times` sorted ascending. */
export function gaps(times: readonly number[]): number[] {
  return times.slice(1).map((t, i) => t - (times[i] ?? 0));
}

/** Starts per second over the span from the first to the last (ms): (n − 1) / span. */
export function ratePerSecond(timesMs: readonly number[]): number {
  const span = (timesMs.at(-1) ?? 0) - (timesMs[0] ?? 0);
  return span > 0 ? ((timesMs.length - 1) * 1000) / span : Number.NaN;
}

/** The median (the upper one of an even count). */
export function median(xs: readonly number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
}
