import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { setup, T0, type Tracked, track } from './helpers.js';

// Realistic epoch milliseconds. The test's own arithmetic on them has ~2.4e-4 ms of float
// precision per operation, hence EPS (0.01 ms: far below the 1 ms timer granularity).
const EPS = 1e-2;

interface Case {
  perSecond: number;
  burst: number;
  windowMax: number;
  windowMs: number;
  gaps: number[];
}

const caseArb: fc.Arbitrary<Case> = fc
  .record({
    perSecond: fc.oneof(
      fc.constant(0),
      fc.constantFrom(1, 6, 10),
      // Fractional rates, including awkward ones (1/3 s⁻¹ has a non-terminating interval).
      fc.double({ min: 0.2, max: 40, noNaN: true, noDefaultInfinity: true }),
    ),
    burst: fc.integer({ min: 1, max: 5 }),
    windowMax: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 8 })),
    windowMs: fc.integer({ min: 50, max: 5000 }),
    // Arrivals: bursts (gap 0), near-rate gaps and idle gaps.
    gaps: fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 1500 })), {
      minLength: 1,
      maxLength: 40,
    }),
  })
  .filter((c) => c.perSecond > 0 || c.windowMax > 0);

afterEach(() => {
  vi.useRealTimers();
});

describe('QueuePacer with LocalSlotStore (property-based, fake time)', () => {
  it('never exceeds either limit, keeps FIFO order, and starts each request at the earliest allowed time', async () => {
    await fc.assert(
      fc.asyncProperty(caseArb, async (c) => {
        vi.useFakeTimers({ now: T0 });
        try {
          const { pacer, store } = setup({
            perSecond: c.perSecond,
            burst: c.burst,
            windowMax: c.windowMax,
            windowMs: c.windowMs,
            queueMax: 1000,
          });
          const arrivals: number[] = [];
          const tracked: Tracked[] = [];
          const order: number[] = [];
          for (const [i, gap] of c.gaps.entries()) {
            await vi.advanceTimersByTimeAsync(gap);
            arrivals.push(Date.now());
            const t = track(pacer.acquire({ deadline: Number.POSITIVE_INFINITY }));
            t.promise.then(() => order.push(i));
            tracked.push(t);
          }
          await vi.runAllTimersAsync();

          const n = c.gaps.length;
          expect(tracked.map((t) => t.state)).toEqual(Array(n).fill('resolved'));
          // FIFO: requests start in arrival order.
          expect(order).toEqual([...Array(n).keys()]);
          const starts = tracked.map((t) => t.at as number);
          const reserved = store.granted;
          expect(reserved).toHaveLength(n);

          const p = c.perSecond / 1000; // starts per ms
          const interval = c.perSecond > 0 ? 1000 / c.perSecond : 0;
          for (let k = 0; k < n; k++) {
            const r = reserved[k] as number;
            const a = starts[k] as number;
            // Observed start: at or after its reserved time, within one timer millisecond.
            expect(a).toBeGreaterThanOrEqual(r - EPS);
            expect(a - r).toBeLessThan(1 + EPS);

            if (c.perSecond > 0) {
              for (let j = 0; j < k; j++) {
                const count = k - j + 1;
                const rj = reserved[j] as number;
                const aj = starts[j] as number;
                // Token bucket: ≤ burst + T × perSecond starts in every closed interval T.
                expect(count).toBeLessThanOrEqual(c.burst + (r - rj) * p + EPS);
                // The same on observed times, allowing the 1 ms rounding of timers.
                expect(count).toBeLessThanOrEqual(c.burst + (a - aj + 1) * p + EPS);
              }
            }
            if (c.windowMax > 0 && k >= c.windowMax) {
              // Sliding window: ≤ windowMax starts in every window, i.e. the windowMax-th
              // previous start is at least windowMs earlier.
              const back = k - c.windowMax;
              expect(r - (reserved[back] as number)).toBeGreaterThanOrEqual(c.windowMs - EPS);
              expect(a - (starts[back] as number)).toBeGreaterThanOrEqual(c.windowMs);
            }

            // Exactness, from the definition rather than the implementation: the earliest time
            // ≥ arrival and ≥ the previous start (FIFO) at which adding a start keeps both
            // limits, given the previous starts.
            let earliest = arrivals[k] as number;
            if (k > 0) earliest = Math.max(earliest, starts[k - 1] as number);
            if (c.perSecond > 0) {
              for (let j = 0; j < k; j++) {
                const count = k - j + 1;
                if (count > c.burst) {
                  earliest = Math.max(
                    earliest,
                    (reserved[j] as number) + (count - c.burst) * interval,
                  );
                }
              }
            }
            if (c.windowMax > 0 && k >= c.windowMax) {
              earliest = Math.max(earliest, (reserved[k - c.windowMax] as number) + c.windowMs);
            }
            // No request waits while a slot is free: it is reserved exactly at the earliest
            // allowed time and started at most 1 ms (timer granularity) later.
            expect(Math.abs(r - earliest)).toBeLessThan(EPS);
            expect(a - earliest).toBeLessThan(1 + EPS);
          }
          await pacer.close();
        } finally {
          vi.useRealTimers();
        }
      }),
      // PACING_PROPERTY_RUNS raises the count for a soak run; 200 keeps CI at about a second.
      { numRuns: Number(process.env.PACING_PROPERTY_RUNS ?? 200) },
    );
  });
});
