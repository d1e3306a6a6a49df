import type { Clock } from '../clock.js';
import type { RouteConfig } from '../config/config.js';
import type { Grant, Reservation, SlotLimits, SlotStore } from './types.js';

/**
 * The share of the budget kept in hand: starts are scheduled at `(1 − WIRE_MARGIN) × perSecond`
 * and over `(1 + WIRE_MARGIN) × window.length`. The stores are exact for the limits they are
 * given, but the upstream counts arrivals, and the way there (event loop, sockets, network, and
 * Redis round trips for a fleet) delays each start by a slightly different amount: measured on
 * loopback, enough to put a 7th arrival into some sliding second at an exact 6/s, and 216 into
 * a 30 s window of 200. 1 % absorbs 10 ms of such jitter per interval at 6/s (and 3 s at the
 * end of a 5-minute window) for 1 % of the rate.
 */
export const WIRE_MARGIN = 0.01;

/**
 * The limits the stores enforce for `rateLimit`: the configured ones less `WIRE_MARGIN`,
 * optionally scaled by `factor` (the `shared.fallback` share a replica uses alone while Redis is
 * unreachable). Scaling never turns a limit off by rounding: a burst stays at least 1 and a
 * configured window keeps at least 1 start, because `windowMax: 0` means "no window" and a
 * rounded-down 0 would lift the WAF limit instead of tightening it.
 */
export function slotLimits(rateLimit: RouteConfig['rateLimit'], factor = 1): SlotLimits {
  const { perSecond, burst, window } = rateLimit;
  return {
    perSecond: perSecond * factor * (1 - WIRE_MARGIN),
    burst: Math.max(1, Math.floor(burst * factor)),
    windowMax: window.max > 0 ? Math.max(1, Math.floor(window.max * factor)) : 0,
    windowMs: Math.round(window.length * (1 + WIRE_MARGIN)),
  };
}

/**
 * The exact limiter of one process: a token bucket and a sliding window over the record of
 * start times, both in memory (docs/pacing.md, "The model").
 *
 * - Token bucket as GCRA (the "virtual scheduling" form of ITU-T I.371): one number, the
 *   theoretical arrival time `tat`. A start at `t` is allowed when `t ≥ tat − (burst − 1) × I`
 *   with `I = 1000 / perSecond` ms, and moves `tat` to `max(tat, t) + I`. This is exactly the
 *   guarantee "at most `burst + T × perSecond` starts in any closed interval of length T", and
 *   the earliest start it allows is the earliest that guarantee allows (no slack).
 * - Sliding window as a ring of the last `windowMax` start times (memory: 8 bytes × windowMax).
 *   A new start must be at least `windowMs` after the `windowMax`-th previous one, so every
 *   half-open interval `[a, a + windowMs)` holds at most `windowMax` starts. A start leaves the
 *   window exactly `windowMs` after it happened.
 *
 * Times are kept unrounded (fractional milliseconds) so that a fractional rate does not drift:
 * rounding each start up to a whole millisecond would lose up to 1 ms per start, i.e. 0.6 % of
 * the rate at 6/s. The pacer sleeps until at least the reserved (fractional) time.
 */
export class LocalSlotStore implements SlotStore {
  readonly #clock: Clock;
  /**
   * Times are kept relative to this clock reading. Epoch milliseconds (~1.7e12) carry only
   * ~2.4e-4 ms of float precision, and `tat` adds a fractional interval on every start; small
   * relative values keep that error below 1e-8 ms.
   */
  readonly #origin: number;
  /** GCRA emission interval in ms; 0 = no token bucket. */
  readonly #intervalMs: number;
  /** GCRA tolerance: how far ahead of `tat` a start may be, `(burst − 1) × intervalMs`. */
  readonly #toleranceMs: number;
  #tat = Number.NEGATIVE_INFINITY;
  /** `tat` before the latest start, so `onWireLate` can recompute it from the real start time. */
  #tatBefore = Number.NEGATIVE_INFINITY;
  readonly #windowMs: number;
  readonly #windowMax: number;
  /** The last `windowMax` reserved starts, oldest at `ringHead` once full; absent = no window. */
  readonly #ring: Float64Array | undefined;
  #ringHead = 0;
  #ringCount = 0;
  /**
   * The latest reserved start. Starts are reserved in non-decreasing order (the FIFO reserves for
   * its head only after the previous start), which keeps the ring sorted for `windowRemaining`.
   */
  #lastStart = Number.NEGATIVE_INFINITY;
  /** The handle of the latest reserved start: only that start can still be moved (`onWireLate`). */
  #lastGrant: Grant | undefined;

  constructor(options: SlotLimits & { clock: Clock }) {
    const { perSecond, burst, windowMax, windowMs, clock } = options;
    if (!(perSecond >= 0) || !Number.isFinite(perSecond)) {
      throw new RangeError(`perSecond must be a finite number ≥ 0, got ${perSecond}`);
    }
    if (!(windowMax >= 0) || !Number.isInteger(windowMax)) {
      throw new RangeError(`windowMax must be an integer ≥ 0, got ${windowMax}`);
    }
    if (windowMax > 0 && !(windowMs > 0)) {
      throw new RangeError(`windowMs must be > 0 when windowMax is set, got ${windowMs}`);
    }
    this.#clock = clock;
    this.#origin = clock.now();
    this.#intervalMs = perSecond > 0 ? 1000 / perSecond : 0;
    // A bucket smaller than one start would never allow a start; 1 is the smallest meaningful.
    this.#toleranceMs = (Math.max(1, burst) - 1) * this.#intervalMs;
    this.#windowMax = windowMax;
    this.#windowMs = windowMs;
    this.#ring = windowMax > 0 ? new Float64Array(windowMax) : undefined;
  }

  /** See `SlotStore.reserve`. Synchronous underneath; the promise only fits the interface. */
  reserve(maxDelayMs: number, notBeforeMs: number): Promise<Reservation> {
    return Promise.resolve(this.reserveNow(maxDelayMs, notBeforeMs));
  }

  /** `reserve` without the promise, for callers in this process (and tests). */
  reserveNow(maxDelayMs: number, notBeforeMs: number): Reservation {
    const now = this.#clock.now() - this.#origin;
    const start = this.#earliestStart(now + Math.max(0, notBeforeMs));
    const delayMs = start - now;
    if (delayMs > maxDelayMs) {
      const refused: Reservation = { granted: false, delayMs };
      if (this.#ring) refused.windowRemaining = this.#windowRemainingAt(now);
      return refused;
    }
    const granted: Reservation = { granted: true, delayMs, grant: this.#record(start) };
    if (this.#ring) granted.windowRemaining = this.#windowRemainingAt(start);
    return granted;
  }

  /** Starts still allowed in the sliding window ending at `at` (default: now); undefined = no window. */
  windowRemaining(at: number = this.#clock.now()): number | undefined {
    return this.#ring ? this.#windowRemainingAt(at - this.#origin) : undefined;
  }

  /**
   * See `SlotStore.onWireLate`: moves the start of `grant` to when it really happened, while it
   * is the latest recorded start. A start granted after it (another route's pacer on the same
   * budget) was computed from the reserved time and stays where it is; moving the latest start
   * instead would move that other request's.
   */
  onWireLate(grant: Grant, lateMs: number): void {
    if (!(lateMs > 0) || grant !== this.#lastGrant) return;
    const actual = this.#lastStart + lateMs;
    if (this.#intervalMs > 0) this.#tat = Math.max(this.#tatBefore, actual) + this.#intervalMs;
    if (this.#ring) {
      const last = (this.#ringHead + this.#windowMax - 1) % this.#windowMax;
      this.#ring[last] = actual;
    }
    this.#lastStart = actual;
  }

  /** Nothing to release: no timers, no connections. */
  close(): Promise<void> {
    return Promise.resolve();
  }

  /** The earliest start at or after `from` that both limits allow, given the recorded starts. */
  #earliestStart(from: number): number {
    let start = Math.max(from, this.#lastStart);
    if (this.#intervalMs > 0) start = Math.max(start, this.#tat - this.#toleranceMs);
    if (this.#ring && this.#ringCount === this.#windowMax) {
      // Full ring: the oldest of the last `windowMax` starts must have left the window.
      start = Math.max(start, (this.#ring[this.#ringHead] as number) + this.#windowMs);
    }
    return start;
  }

  #record(start: number): Grant {
    this.#tatBefore = this.#tat;
    if (this.#intervalMs > 0) this.#tat = Math.max(this.#tat, start) + this.#intervalMs;
    if (this.#ring) {
      this.#ring[this.#ringHead] = start;
      this.#ringHead = (this.#ringHead + 1) % this.#windowMax;
      if (this.#ringCount < this.#windowMax) this.#ringCount++;
    }
    this.#lastStart = start;
    this.#lastGrant = {};
    return this.#lastGrant;
  }

  /** `windowMax` minus the starts in `(at − windowMs, at]` (relative ms), by binary search of the sorted ring. */
  #windowRemainingAt(at: number): number {
    const ring = this.#ring as Float64Array;
    const count = this.#ringCount;
    const oldest = count === this.#windowMax ? this.#ringHead : 0;
    const after = at - this.#windowMs;
    // First logical index whose start is still inside the window (start > after).
    let lo = 0;
    let hi = count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((ring[(oldest + mid) % this.#windowMax] as number) > after) hi = mid;
      else lo = mid + 1;
    }
    // Reserved starts later than `at` (at most one with the FIFO pacer) count as already used.
    return this.#windowMax - (count - lo);
  }
}
