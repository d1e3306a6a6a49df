/**
 * The seam between forwarding and pacing. The proxy handler only sees `Pacer`; how start times
 * are recorded (in this process, or in Redis for a fleet) is behind `SlotStore`.
 */

/** What a request brings to the queue. */
export interface AcquireOptions {
  /** Absolute time (clock ms) after which the request gives up: one deadline for token and slot. */
  deadline: number;
  /** Aborted when the client goes away: the request leaves the queue and is never sent. */
  signal?: AbortSignal;
  /**
   * Awaited before the request may take a slot (e.g. "a valid token exists"). Requests waiting
   * here count in the queue length and against `queue.max`; if it rejects (e.g. with
   * `TokenUnavailableError` at the deadline), `acquire` rejects with the same error.
   */
  ready?: (deadline: number, signal?: AbortSignal) => Promise<void>;
}

/** Gatekeeper of request starts towards the upstream (docs/pacing.md). */
export interface Pacer {
  /**
   * Resolves when the request may start now; the start is recorded. Rejects with
   * `RateLimitedError` (with `retryAfterMs`) when the queue is full or the deadline passes
   * first, `ShuttingDownError` once closed, or with the signal's reason when the client aborts.
   */
  acquire(options: AcquireOptions): Promise<void>;
  /**
   * Starts a request at once, synchronously, when nothing makes it wait (pacing off, no upstream
   * pause); `false` means "call `acquire`". The forwarding fast path: no promise, no queue entry.
   */
  tryAcquireNow(): boolean;
  /**
   * The request that last started has reached the upstream's socket, or failed before it: call
   * once per granted start (`acquire` resolved, `tryAcquireNow` true). Limits are on what the
   * upstream sees, and the way from the slot to the wire can take a connection handshake; the
   * next start is reserved only after this, counted from the real send time.
   *
   * Returns false when the start reached the wire too late for its slot in a shared budget (the
   * process stalled between the slot and the write): the slot is forfeited, the request must NOT
   * be written, and the caller acquires again. Called from the last synchronous step before the
   * write, so no stall can come between this check and the bytes leaving.
   */
  onWire(): boolean;
  /** An upstream `Retry-After`: no request starts before `until` (clock ms), capped by the pacer. */
  pauseUntil(until: number): void;
  /** Requests currently waiting (for `ready` or for a slot). */
  readonly waiting: number;
  /** Stops timers and external connections; waiting requests are rejected. */
  close(): Promise<void>;
}

/** The answer of a `SlotStore` to one reservation. */
export interface Reservation {
  /** True when a start time was reserved. */
  granted: boolean;
  /**
   * Granted: milliseconds from now until the reserved start (0 = start now).
   * Refused: milliseconds from now until the earliest start that would be allowed (for `Retry-After`).
   */
  delayMs: number;
  /** Starts still allowed in the current sliding window after this reservation, when known. */
  windowRemaining?: number;
  /**
   * Granted: this grant's handle, which the pacer gives back to the store with `mayStart` and
   * `onWireLate` for the request that holds it. A store without those may leave it out.
   */
  grant?: Grant;
}

/**
 * An opaque handle on one granted reservation; only the store that made it reads it. Several
 * pacers may draw from one store (the routes sharing a `rateLimit.shared.key` share the process's
 * one Redis connection and fallback share), so the store's latest grant may be another pacer's:
 * a check or a correction names the grant it is about, and acts on that one only.
 */
export type Grant = object;

/**
 * The record of start times: the token bucket and the sliding window, applied together. The
 * local implementation keeps it in memory; the fleet one in Redis (one atomic script per call,
 * Redis server time). A pacer's FIFO reserves for its head only, so at most one reservation per
 * pacer is ever outstanding in the future; a store shared by several routes' pacers has one per
 * pacer, and tells their grants apart by their handles (`Grant`).
 */
export interface SlotStore {
  /**
   * Atomically reserves the earliest start, no earlier than `notBeforeMs` from now, that keeps
   * at most `burst + T × perSecond` starts in any interval T and at most `window.max` in any
   * `window.length` — but only if it is at most `maxDelayMs` from now; otherwise reserves
   * nothing and says when a start would be allowed. A store may take a while to answer (the
   * fleet's store waits until a slot is nearly due before it is granted); it then stops and
   * rejects with the signal's reason when `signal` aborts (the request left).
   */
  reserve(maxDelayMs: number, notBeforeMs: number, signal?: AbortSignal): Promise<Reservation>;
  /**
   * Optional: starts still allowed in the sliding window as of now (reserved future starts count
   * as used); `undefined` when there is no window. Only a store that can answer synchronously,
   * without I/O, implements it: the pacer then reads it at every metrics scrape, so
   * `m2m_proxy_window_remaining` rises again as starts leave the window even when no request
   * comes. A store without it (Redis) leaves the gauge at the value of its last reservation.
   */
  windowRemaining?(): number | undefined;
  /**
   * Optional: the request holding `grant` started `lateMs` after its reserved time (an
   * event-loop stall, a timer firing late). A store in this process moves the recorded start to
   * the real one, so the slots after it shift too and the limits hold for the starts the upstream
   * actually sees, not only for the schedule; it can do so only while `grant` is still its latest
   * (a later grant was already computed from the reserved time). (Redis keeps the schedule: a
   * late start there is the safe side of the fleet's budget only up to the lateness.)
   */
  onWireLate?(grant: Grant, lateMs: number): void;
  /**
   * Optional: may the request holding `grant` still start, `lateMs` after its reserved time? A
   * shared store answers false when the lateness (plus what the store does not know about its
   * own clock) exceeds the tolerance the fleet's schedule keeps in hand: the other replicas'
   * slots were handed out on the assumption that this one goes on time, so it must give that
   * slot (and no other) up and reserve again. Absent or true: start.
   */
  mayStart?(grant: Grant, lateMs: number): boolean;
  /** Releases connections and timers. */
  close(): Promise<void>;
}

/**
 * A `maxDelayMs` for `SlotStore.reserve` that can never be met: the store reserves nothing and
 * only says, in `delayMs`, when a start would be allowed. The pacer uses it to compute an honest
 * `Retry-After` for a request it turns away (queue full, deadline passed). Every `SlotStore` must
 * treat a negative `maxDelayMs` this way (a delay is never below 0).
 */
export const PROBE_MAX_DELAY_MS = -1;

/** The limits a `SlotStore` enforces, as plain numbers (durations in milliseconds). */
export interface SlotLimits {
  /** Steady starts per second; fractional allowed; 0 = no token bucket. */
  perSecond: number;
  /** Starts that may go at once after idle time (bucket capacity, at least 1). */
  burst: number;
  /** At most this many starts in any sliding `windowMs`; 0 = no window. */
  windowMax: number;
  /** Length of the sliding window. */
  windowMs: number;
}
