import type { Clock } from '../../src/clock.js';
import type { Reservation, SlotStore } from '../../src/pacing/types.js';

/**
 * A small in-memory `SlotStore` (GCRA + exact sliding window) standing in for `LocalSlotStore`
 * in the shared-budget tests, so they do not depend on the pacer's implementation. It records
 * every construction's limits and every reservation so tests can see what the fallback did.
 */
export class StandInLocalStore implements SlotStore {
  readonly starts: number[] = [];
  closed = false;
  #tat = Number.NEGATIVE_INFINITY;

  constructor(
    readonly limits: {
      perSecond: number;
      burst: number;
      windowMax: number;
      windowMs: number;
      clock: Clock;
    },
  ) {}

  async reserve(maxDelayMs: number, notBeforeMs: number): Promise<Reservation> {
    const { perSecond, burst, windowMax, windowMs, clock } = this.limits;
    const now = clock.now();
    const interval = perSecond > 0 ? 1000 / perSecond : 0;
    let start = now + notBeforeMs;
    if (interval > 0) start = Math.max(start, this.#tat - (burst - 1) * interval);
    const last = this.starts.at(-1);
    if (last !== undefined) start = Math.max(start, last);
    if (windowMax > 0 && this.starts.length >= windowMax) {
      const decisive = this.starts[this.starts.length - windowMax];
      if (decisive !== undefined) start = Math.max(start, decisive + windowMs);
    }
    const delayMs = Math.ceil(start - now);
    if (delayMs > maxDelayMs) return { granted: false, delayMs };
    start = now + delayMs;
    if (interval > 0) this.#tat = Math.max(this.#tat, start) + interval;
    this.starts.push(start);
    return { granted: true, delayMs };
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
