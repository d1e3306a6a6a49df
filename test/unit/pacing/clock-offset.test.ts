import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ClockOffset } from '../../../src/pacing/clock-offset.js';

describe('ClockOffset', () => {
  it('places a remote instant at the latest local time it can be', () => {
    // Remote clock 1000 ms ahead, read 2 ms into a 4 ms round trip: offset 1000 ± 2, so remote
    // 5000 is local 4000, at the latest 4002.
    expect(new ClockOffset().localTimeOf(5000, 10, 14, 1012)).toBe(4002);
  });

  it('puts a start the remote granted for its "now" no later than the answer', () => {
    const offset = new ClockOffset();
    offset.localTimeOf(0, 0, 1, 1000.5); // 1000 ± 0.5
    // Read at the very end of a trip (local 104): the estimate alone would say 104.5, after the
    // answer arrived, although the start was due when the remote answered.
    expect(offset.localTimeOf(1104, 100, 104, 1104)).toBe(104);
  });

  it('keeps the tighter sample: one slow round trip does not move the estimate', () => {
    const offset = new ClockOffset();
    offset.localTimeOf(0, 0, 1, 1000.5); // 1 ms round trip: 1000 ± 0.5
    // A 30 ms round trip where the server answered at once: its midpoint would say 985 ± 15.
    expect(offset.localTimeOf(5000, 100, 130, 1100)).toBe(4000.5);
  });

  it('gives way to a looser sample once the kept one is old enough', () => {
    const offset = new ClockOffset();
    offset.localTimeOf(0, 0, 1, 1000.5);
    // 20 s later the 0.5 ms bound has aged to 2.5 ms: a 2 ms bound (1007 ± 2) wins.
    expect(offset.localTimeOf(5000, 20_000, 20_004, 20_002 + 1007)).toBe(3995);
  });

  it('is never early and late by at most the best round trip, wherever the readings fell', () => {
    const trip = fc.tuple(
      fc.double({ min: 0, max: 50, noNaN: true }),
      fc.double({ min: 0, max: 1, noNaN: true }),
    );
    fc.assert(
      fc.property(
        fc.double({ min: -1e6, max: 1e6, noNaN: true }),
        fc.array(trip, { minLength: 1, maxLength: 30 }),
        (truth, trips) => {
          const offset = new ClockOffset();
          let t = 0;
          let local = 0;
          let best = Number.POSITIVE_INFINITY;
          for (const [rtt, where] of trips) {
            local = offset.localTimeOf(1e7, t, t + rtt, t + where * rtt + truth);
            best = Math.min(best, rtt);
            t += rtt + 1; // samples close together: ageing stays below 3 µs
          }
          const exact = 1e7 - truth; // the local time at which the remote clock reads 1e7
          expect(local).toBeGreaterThanOrEqual(exact - 1e-6);
          expect(local - exact).toBeLessThanOrEqual(best + 0.01);
        },
      ),
    );
  });
});
