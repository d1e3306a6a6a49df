import { describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import { LocalSlotStore, slotLimits } from '../../../src/pacing/local-slot-store.js';
import { type Grant, PROBE_MAX_DELAY_MS } from '../../../src/pacing/types.js';
import { useFakeTimeFromT0 } from './helpers.js';

useFakeTimeFromT0();

const store = (perSecond: number, burst: number, windowMax = 0, windowMs = 1000) =>
  new LocalSlotStore({ perSecond, burst, windowMax, windowMs, clock: systemClock });

describe('LocalSlotStore', () => {
  it('allows a burst at once, then one start per interval', () => {
    const s = store(4, 3);
    const delays = Array.from(
      { length: 6 },
      () => s.reserveNow(Number.POSITIVE_INFINITY, 0).delayMs,
    );
    expect(delays).toEqual([0, 0, 0, 250, 500, 750]);
  });

  it('refills the bucket while idle, but never above burst', () => {
    const s = store(1, 2);
    s.reserveNow(0, 0);
    s.reserveNow(0, 0);
    vi.advanceTimersByTime(60_000);
    expect(s.reserveNow(0, 0).granted).toBe(true);
    expect(s.reserveNow(0, 0).granted).toBe(true);
    expect(s.reserveNow(0, 0)).toMatchObject({ granted: false, delayMs: 1000 });
  });

  it('refuses a start beyond maxDelayMs without recording it, and says when it would be allowed', () => {
    const s = store(1, 1);
    s.reserveNow(0, 0);
    expect(s.reserveNow(500, 0)).toMatchObject({ granted: false, delayMs: 1000 });
    expect(s.reserveNow(PROBE_MAX_DELAY_MS, 0)).toMatchObject({ granted: false, delayMs: 1000 });
    // Nothing was recorded by the refusals: the next slot is still at +1 s.
    expect(s.reserveNow(1000, 0)).toMatchObject({ granted: true, delayMs: 1000 });
  });

  it('a probe (negative maxDelayMs) never reserves, even when a start is allowed now', () => {
    const s = store(1, 1);
    expect(s.reserveNow(PROBE_MAX_DELAY_MS, 0)).toMatchObject({ granted: false, delayMs: 0 });
    expect(s.reserveNow(0, 0)).toMatchObject({ granted: true, delayMs: 0 });
  });

  it('honours notBeforeMs', () => {
    const s = store(10, 5);
    expect(s.reserveNow(10_000, 3000)).toMatchObject({ granted: true, delayMs: 3000 });
  });

  it('does not drift at a fractional rate', () => {
    const s = store(0.3, 1);
    let last = 0;
    for (let i = 0; i < 1000; i++) last = s.reserveNow(Number.POSITIVE_INFINITY, 0).delayMs;
    expect(Math.abs(last - (999 * 1000) / 0.3)).toBeLessThan(1e-6);
  });

  it('keeps at most windowMax starts in any window and reports the remaining budget', () => {
    const s = store(0, 1, 3, 1000);
    expect(s.windowRemaining()).toBe(3);
    expect(s.reserveNow(0, 0)).toMatchObject({ granted: true, delayMs: 0, windowRemaining: 2 });
    vi.advanceTimersByTime(100);
    expect(s.reserveNow(0, 0)).toMatchObject({ granted: true, windowRemaining: 1 });
    expect(s.reserveNow(0, 0)).toMatchObject({ granted: true, windowRemaining: 0 });
    // The 4th must wait until the 1st (at T0) leaves: T0 + 1000, i.e. 900 ms from now.
    expect(s.reserveNow(PROBE_MAX_DELAY_MS, 0)).toMatchObject({ granted: false, delayMs: 900 });
    vi.advanceTimersByTime(900);
    expect(s.windowRemaining()).toBe(1);
    expect(s.reserveNow(0, 0)).toMatchObject({ granted: true, delayMs: 0, windowRemaining: 0 });
    // Then the two at T0 + 100 leave at T0 + 1100.
    expect(s.reserveNow(PROBE_MAX_DELAY_MS, 0).delayMs).toBe(100);
  });

  it('moves a late start by its own grant, and only while it is the latest start', () => {
    const s = store(10, 1); // 100 ms apart
    const a = s.reserveNow(Number.POSITIVE_INFINITY, 0); // at 0
    const b = s.reserveNow(Number.POSITIVE_INFINITY, 0); // at 100 (another route's pacer)
    // a went out 80 ms late: b was already computed from a's reserved time and is not moved.
    s.onWireLate(a.grant as Grant, 80);
    expect(s.reserveNow(PROBE_MAX_DELAY_MS, 0).delayMs).toBe(200);
    // b went out 30 ms late: the next start keeps its distance from b's real start.
    s.onWireLate(b.grant as Grant, 30);
    expect(s.reserveNow(PROBE_MAX_DELAY_MS, 0).delayMs).toBe(230);
  });

  it('holds memory bounded by windowMax however many starts it records', () => {
    const s = store(0, 1, 5, 1000);
    for (let i = 0; i < 10_000; i++) {
      vi.advanceTimersByTime(200);
      expect(s.reserveNow(0, 0).granted).toBe(true);
    }
    // The window holds exactly the last 5 starts (now, −200, …, −800 ms): the next may start
    // once the one at −800 ms leaves, 200 ms from now.
    expect(s.windowRemaining()).toBe(0);
    expect(s.reserveNow(PROBE_MAX_DELAY_MS, 0).delayMs).toBe(200);
  });

  it('rejects impossible limits', () => {
    expect(() => store(-1, 1)).toThrow(RangeError);
    expect(() => store(1, 1, 1.5)).toThrow(RangeError);
    expect(() => store(1, 1, 10, 0)).toThrow(RangeError);
  });
});

describe('slotLimits', () => {
  const rateLimit = {
    perSecond: 6,
    burst: 2,
    window: { max: 3, length: 300_000 },
    queue: { max: 1000, timeout: 30_000 },
  };

  it('maps the configuration, keeping the 1 % wire margin in hand', () => {
    expect(slotLimits(rateLimit)).toEqual({
      perSecond: 6 * 0.99,
      burst: 2,
      windowMax: 3,
      windowMs: 303_000,
    });
  });

  it('scales for the fallback share without rounding a limit away', () => {
    expect(slotLimits(rateLimit, 0.25)).toEqual({
      perSecond: 1.5 * 0.99,
      burst: 1,
      windowMax: 1, // floor(0.75) would be 0 = "no window"
      windowMs: 303_000,
    });
    expect(slotLimits({ ...rateLimit, window: { max: 0, length: 1 } }, 0.25).windowMax).toBe(0);
  });
});
