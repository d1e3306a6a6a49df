import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ClockOffset } from '../../../src/pacing/clock-offset.js';

describe('ClockOffset', () => {
  it('takes the midpoint of a round trip', () => {
    // Remote clock 1000 ms ahead, read 2 ms into a 4 ms round trip.
    expect(new ClockOffset().sample(10, 14, 1012)).toBe(1000);
  });

  it('keeps the tighter sample: one slow round trip does not move the estimate', () => {
    const offset = new ClockOffset();
    offset.sample(0, 1, 1000.5); // 1 ms round trip: offset 1000 ± 0.5
    // 30 ms round trip where the server answered at once: the midpoint would say 985.
    expect(offset.sample(100, 130, 1100)).toBe(1000);
  });

  it('gives way to a looser sample once the kept one is old enough', () => {
    const offset = new ClockOffset();
    offset.sample(0, 1, 1000.5);
    // 20 s later the 0.5 ms bound has aged to 2.5 ms: a 2 ms bound (4 ms round trip) wins.
    expect(offset.sample(20_000, 20_004, 20_002 + 1007)).toBe(1007);
  });

  it('errs by at most half the best round trip, wherever the remote reading fell', () => {
    fc.assert(
      fc.property(
        fc.double({ min: -1e6, max: 1e6, noNaN: true }),
        fc.array(
          fc.tuple(
            fc.double({ min: 0, max: 50, noNaN: true }),
            fc.double({ min: 0, max: 1, noNaN: true }),
          ),
          {
            minLength: 1,
            maxLength: 30,
          },
        ),
        (truth, trips) => {
          const offset = new ClockOffset();
          let t = 0;
          let estimate = 0;
          let best = Number.POSITIVE_INFINITY;
          for (const [rtt, where] of trips) {
            estimate = offset.sample(t, t + rtt, t + where * rtt + truth);
            best = Math.min(best, rtt / 2);
            t += rtt + 1; // samples close together: ageing stays negligible
          }
          expect(Math.abs(estimate - truth)).toBeLessThanOrEqual(
            best + 1e-3 + 1e-9 * Math.abs(truth),
          );
        },
      ),
    );
  });
});
