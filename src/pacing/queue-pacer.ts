/*
 * Longer than the project's ~300 lines on purpose: the QueuePacer is one state machine (the FIFO,
 * its head, the reservation, the wait for the start on the wire) whose invariants (at most one
 * outstanding reservation, one `serve` owning the head) only read as a whole. Split out already:
 * the admission bounds and pause (base-pacer.ts), the unpaced pacer and the factory.
 */
import PQueue from 'p-queue';
import { MAX_TIMER_MS, type Timer } from '../clock.js';
import { Deadlines, type Timed } from '../deadlines.js';
import { onCollect } from '../metrics/collect.js';
import { BasePacer, type PacerOptions } from './base-pacer.js';
import { RateLimitedError, ShuttingDownError } from './errors.js';
import {
  type AcquireOptions,
  type Grant,
  type Pacer,
  PROBE_MAX_DELAY_MS,
  type Reservation,
  type SlotStore,
} from './types.js';

/**
 * Lateness that is timer granularity, not a stall: timers fire in whole milliseconds and
 * rarely exactly on time. Recording it would lower the achieved rate by that much every
 * interval (1.2 % at 6/s) without protecting anything.
 */
const TIMER_SLACK_MS = 2;

/**
 * How long the next reservation waits for the previous start to be confirmed on the wire
 * (`Pacer.onWire`). A new connection to the upstream takes a handshake or two; beyond this the
 * start is recorded as happening now and pacing goes on (an unreachable upstream, or a caller
 * that never confirms, must not stop every request).
 */
export const ON_WIRE_WAIT_MAX_MS = 1000;

/** The options of the pacing `QueuePacer`. */
export interface QueuePacerOptions extends PacerOptions {
  /** The record of start times: `LocalSlotStore`, or the fleet's Redis store. */
  store: SlotStore;
  /**
   * True: the caller reports every start with `onWire()` when the request reaches the upstream's
   * socket, and the next reservation waits for it (the proxy always does). False: starts count
   * when granted (a test of the schedule alone).
   */
  awaitOnWire: boolean;
}

/**
 * One request in a `QueuePacer`, from admission until it starts or leaves. Up to `queue.max` of
 * them exist at once, so it carries its own deadline links (one timer serves every deadline)
 * rather than a timer of its own.
 */
class Entry implements Timed<Entry> {
  /** Neighbours in deadline order, kept by `Deadlines` while the entry is in the FIFO. */
  earlier: Entry | undefined = undefined;
  later: Entry | undefined = undefined;
  settled = false;

  constructor(
    readonly deadline: number,
    /** Clock ms when `acquire` was called, for `m2m_proxy_queue_wait_seconds`. */
    readonly since: number,
    readonly resolve: () => void,
    readonly reject: (error: unknown) => void,
  ) {}
}

/**
 * Paces request starts exactly (docs/pacing.md): a FIFO of waiting requests on a
 * concurrency-1 `p-queue`, where only the head asks the `SlotStore` for a start time.
 *
 * p-queue provides the FIFO and removal of aborted entries; its own `interval`/`intervalCap`
 * are fixed windows (up to twice the rate across a window boundary) and are not used. The
 * guarantee comes from the store, and because the head reserves only after the previous
 * request has started, at most one future reservation is outstanding: a request that leaves
 * wastes at most one slot, and the rest of the queue holds no claim on the budget.
 *
 * Up to `queue.max` requests wait at once (the benchmark queues 10,000), so what one costs is
 * kept to p-queue's task (with its listener on the client's signal, the request's only one while
 * queued), one `Entry`, its promise and the two small closures p-queue is handed; one timer
 * serves every deadline (`Deadlines`).
 *
 * Semantics:
 * - Admission: `waiting ≥ queue.max` → `RateLimitedError` at once. `queue.max: 0` means "no queue":
 *   one request at a time may wait for the token, and it must get a slot at once.
 * - `ready` (the token) is awaited before joining the FIFO, concurrently for all requests; they
 *   count in `waiting`. Its rejection is propagated unchanged.
 * - The head reserves with `maxDelayMs = deadline − now`; a slot beyond its deadline is refused
 *   by the store and the request gets `RateLimitedError` at once (waiting would not help).
 * - A queued (non-head) request whose deadline passes gets `RateLimitedError`.
 * - `Retry-After` is the store's answer to "when would a start be allowed", never a constant.
 * - A request whose client aborts leaves at once, wherever it waits.
 * - An aborted head that already holds a reservation leaves its slot unused: the start is
 *   recorded (in Redis it cannot be taken back atomically anyway) and the next head gets the
 *   slot after it. That errs on the side of the upstream's budget.
 */
export class QueuePacer extends BasePacer implements Pacer {
  readonly #store: SlotStore;
  readonly #fifo = new PQueue({ concurrency: 1 });
  /**
   * Entries in the FIFO whose deadline still applies (all but a head holding a slot); with
   * `head`, every entry `close()` must reject.
   */
  readonly #deadlines: Deadlines<Entry>;
  /** A probe's answer "no start before this clock ms", reused until it passes. */
  #probedFreeAt = Number.NEGATIVE_INFINITY;
  /** The entry whose `serve` is running, and how to wake it early when it leaves. */
  #head: Entry | undefined;
  #wakeHead: (() => void) | undefined;
  /** Settles when the running `serve` ends, while the next one waits for it (`serve`). */
  #headDone: Promise<void> | undefined;
  #endHead: (() => void) | undefined;
  /** Removes the scrape hook of `m2m_proxy_window_remaining`, when one was installed. */
  readonly #stopWindowGauge: (() => void) | undefined;
  readonly #awaitOnWire: boolean;
  /** The latest start is not confirmed on the wire yet: the next head must not reserve. */
  #awaitingWire = false;
  /** Clock ms the latest start is recorded at (moved by `onWire` when it went out late). */
  #recordedAt = Number.NEGATIVE_INFINITY;
  /** Clock ms of the latest start's reserved slot, for the store's lateness check (`onWire`). */
  #slotAt = Number.NEGATIVE_INFINITY;
  /**
   * The latest start's grant: the lateness check and the correction of `onWire` act on it, not
   * on the store's latest grant, which may be another route's pacer's when routes share a store.
   */
  #grant: Grant | undefined;
  #wakeOnWire: (() => void) | undefined;

  constructor(options: QueuePacerOptions) {
    super(options);
    this.#store = options.store;
    this.#awaitOnWire = options.awaitOnWire;
    this.#deadlines = new Deadlines(this.clock, (entry) => this.#expired(entry));
    // Setting the gauge only when a reservation is made leaves it stale while no request comes:
    // after a burst it would read 0 for good, although the window empties `window.length` later.
    // A store that knows the window synchronously is read at every scrape instead.
    const store = this.#store;
    if (store.windowRemaining) {
      const gauge = this.metrics.windowRemaining;
      this.#stopWindowGauge = onCollect(gauge, () => {
        const remaining = store.windowRemaining?.();
        if (remaining !== undefined) gauge.set(remaining);
      });
    }
  }

  /** Every start goes through the FIFO and the store. */
  tryAcquireNow(): boolean {
    return false;
  }

  /**
   * See `Pacer.onWire`. A start that reached the wire later than recorded (a new connection, a
   * stall between the slot and the write) moves its recorded start to now, so the starts after
   * it keep their distance from what the upstream really saw. Confirmations carry no identity:
   * one arriving after `ON_WIRE_WAIT_MAX_MS` gave up on it confirms the next start instead, which
   * can then be followed before it is on the wire (only after a handshake that took over 1 s).
   */
  onWire(): boolean {
    if (!this.#awaitingWire) return true;
    this.#awaitingWire = false;
    const now = this.clock.now();
    // The last check before the write: a stall after the slot was granted (between the pacer
    // and the socket: the token, a connection, the dispatch) makes the start too late for a
    // shared schedule, and it is given up rather than sent close behind another replica's.
    const grant = this.#grant;
    this.#grant = undefined;
    const onTime =
      grant === undefined || this.#store.mayStart?.(grant, now - this.#slotAt) !== false;
    if (onTime) {
      const lateMs = now - this.#recordedAt;
      if (lateMs > TIMER_SLACK_MS && grant !== undefined) this.#store.onWireLate?.(grant, lateMs);
    }
    this.#wakeOnWire?.();
    return onTime;
  }

  /**
   * No confirmation within `ON_WIRE_WAIT_MAX_MS`: the start counts as on the wire now (recorded as late as
   * that), without the lateness check, which is for a start about to be written.
   */
  #assumeOnWire(): void {
    if (!this.#awaitingWire) return;
    this.#awaitingWire = false;
    const grant = this.#grant;
    this.#grant = undefined;
    const lateMs = this.clock.now() - this.#recordedAt;
    if (lateMs > TIMER_SLACK_MS && grant !== undefined) this.#store.onWireLate?.(grant, lateMs);
    this.#wakeOnWire?.();
  }

  /** See `Pacer.acquire`. */
  acquire(options: AcquireOptions): Promise<void> {
    // Not `async`: an async function's promise would wrap the entry's for as long as it waits.
    const { deadline, signal, ready } = options;
    if (this.closed) return Promise.reject(new ShuttingDownError());
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.count >= this.admitMax) {
      return this.#probeDelayMs().then((delayMs) => Promise.reject(new RateLimitedError(delayMs)));
    }
    const since = this.clock.now();
    this.setWaiting(this.count + 1);
    return new Promise<void>((resolve, reject) => {
      const entry = new Entry(deadline, since, resolve, reject);
      if (ready) this.#afterReady(entry, signal, ready);
      else this.#join(entry, signal);
    });
  }

  /**
   * Rejects every request still in the FIFO with `ShuttingDownError`, and closes the store. Call it
   * after the drain (`shutdown.timeout`): the handler lets queued requests finish first.
   */
  async close(): Promise<void> {
    this.closed = true;
    this.#stopWindowGauge?.();
    for (const entry of this.#deadlines.drain()) this.#leave(entry, new ShuttingDownError());
    if (this.#head !== undefined) this.#leave(this.#head, new ShuttingDownError());
    this.#fifo.clear();
    await this.#store.close();
  }

  /**
   * Joins the FIFO once `ready` resolves. Until then the request has an abort listener of the
   * pacer's (a `ready` that ignores the signal must not keep an aborted request waiting); it and
   * the closures here live only as long as `ready` does, not in the entry.
   */
  #afterReady(
    entry: Entry,
    signal: AbortSignal | undefined,
    ready: NonNullable<AcquireOptions['ready']>,
  ): void {
    let token: Promise<void>;
    try {
      token = ready(entry.deadline, signal);
    } catch (error) {
      this.#leave(entry, error);
      return;
    }
    const onAbort = signal && (() => this.#leave(entry, signal.reason));
    if (onAbort) signal?.addEventListener('abort', onAbort);
    // Settled meanwhile (aborted): `join` and `leave` do nothing then.
    token.then(
      () => {
        if (onAbort) signal?.removeEventListener('abort', onAbort);
        this.#join(entry, signal);
      },
      (error: unknown) => {
        if (onAbort) signal?.removeEventListener('abort', onAbort);
        this.#leave(entry, error);
      },
    );
  }

  /** Appends a ready entry to the FIFO: its task is its turn as the head (`serve`). */
  #join(entry: Entry, signal: AbortSignal | undefined): void {
    if (entry.settled) return;
    if (this.closed) {
      this.#leave(entry, new ShuttingDownError());
      return;
    }
    this.#deadlines.add(entry);
    // The client's signal goes to p-queue itself, the request's only abort listener from here on:
    // on abort p-queue removes the queued task at once (or stops waiting for the running one) and
    // rejects `add` with the signal's reason.
    this.#fifo
      .add(() => this.#serve(entry), signal ? { signal } : undefined)
      .catch((error: unknown) => this.#leave(entry, error));
  }

  /**
   * A queued entry's deadline passed: settle it at once so that it never starts (p-queue skips
   * it when it comes up); the Retry-After follows from the store. Its task stays in p-queue
   * until then, as p-queue removes tasks only on their signal; deadlines come in nearly the
   * order of the FIFO, so the head has started or left before those behind it expire.
   */
  #expired(entry: Entry): void {
    if (entry.settled) return;
    this.#finish(entry);
    this.#probeDelayMs().then(
      (delayMs) => entry.reject(new RateLimitedError(delayMs)),
      entry.reject,
    );
  }

  /** Takes the entry out, rejecting it with `reason`: no start will happen for it. Idempotent. */
  #leave(entry: Entry, reason: unknown): void {
    if (entry.settled) return;
    this.#finish(entry);
    entry.reject(reason);
  }

  /** Marks the entry settled and releases what it holds; wakes it if it is the waiting head. */
  #finish(entry: Entry): void {
    entry.settled = true;
    this.#deadlines.delete(entry);
    if (entry === this.#head) this.#wakeHead?.();
    this.setWaiting(this.count - 1);
  }

  /** The head's turn: reserve a slot, wait for it, start. Runs one at a time (p-queue). */
  async #serve(entry: Entry): Promise<void> {
    // p-queue ends an aborted head's task at once and starts the next, while that head's `serve`
    // may still await the store: the next waits for it, so that at most one reservation is
    // outstanding and one `serve` at a time owns `head` and the wake-ups.
    while (this.#head !== undefined && !entry.settled) {
      this.#headDone ??= new Promise<void>((resolve) => {
        this.#endHead = resolve;
      });
      await this.#headDone;
    }
    if (entry.settled) return;
    this.#head = entry;
    try {
      while (!entry.settled) {
        if (this.#awaitingWire) {
          await this.#untilOnWire();
          continue;
        }
        const now = this.clock.now();
        const pauseMs = Math.max(0, this.pausedUntil - now);
        const maxDelayMs = this.noQueue ? Math.min(0, entry.deadline - now) : entry.deadline - now;
        let reservation: Reservation;
        // The store may wait before it answers (a fleet's slot not yet due): a head that leaves
        // meanwhile stops it.
        const cancel = new AbortController();
        this.#wakeHead = () => cancel.abort();
        try {
          reservation = await this.#store.reserve(maxDelayMs, pauseMs, cancel.signal);
        } catch (error) {
          this.#leave(entry, error);
          return;
        } finally {
          this.#wakeHead = undefined;
        }
        if (reservation.windowRemaining !== undefined) {
          this.metrics.windowRemaining.set(reservation.windowRemaining);
        }
        // Left while the store answered: a granted slot stays unused (see the class comment).
        if (entry.settled) return;
        if (!reservation.granted) {
          this.#probedFreeAt = this.clock.now() + reservation.delayMs;
          this.#leave(entry, new RateLimitedError(reservation.delayMs));
          return;
        }
        // The slot is within the deadline: the deadline must not reject a request that holds
        // one (it would fire at the same instant as the start).
        this.#deadlines.delete(entry);
        // A delay from now, as the store answered (the Redis store converts its server's clock).
        const reservedAt = this.clock.now() + reservation.delayMs;
        await this.#sleepUntil(entry, reservedAt);
        // Left while waiting for its slot (abort, close): the slot stays unused.
        if (entry.settled) return;
        // An upstream pause that arrived while waiting: the reserved slot is left unused (it
        // stays counted: safe side) and a new one is reserved after the pause.
        if (this.pausedUntil > this.clock.now()) continue;
        const lateMs = this.clock.now() - reservedAt;
        const { grant } = reservation;
        if (grant !== undefined) {
          // Too late for a shared schedule (a stall while waiting for the slot): the slot is
          // given up and the head reserves again; the fleet's next starts were planned around it.
          if (this.#store.mayStart?.(grant, Math.max(0, lateMs)) === false) continue;
          // Started late (a stall): record the real start, or the next slot, already due, would
          // follow it closer than the limits allow.
          if (lateMs > TIMER_SLACK_MS) this.#store.onWireLate?.(grant, lateMs);
        }
        if (this.#awaitOnWire) {
          this.#awaitingWire = true;
          this.#grant = grant;
          this.#slotAt = reservedAt;
          this.#recordedAt = Math.max(reservedAt, this.clock.now());
        }
        this.#start(entry);
      }
    } finally {
      this.#head = undefined;
      const endHead = this.#endHead;
      this.#headDone = undefined;
      this.#endHead = undefined;
      endHead?.();
    }
  }

  #start(entry: Entry): void {
    this.#finish(entry);
    this.metrics.queueWait.observe((this.clock.now() - entry.since) / 1000);
    entry.resolve();
  }

  /**
   * Waits until the clock reads at least `at`, or until the head settles (`wakeHead`). Timers
   * fire in whole milliseconds and may fire a little early relative to `Date.now()`; starting
   * before the reserved time would break the guarantee, so it checks and waits again.
   */
  #sleepUntil(entry: Entry, at: number): Promise<void> {
    return new Promise<void>((resolve) => {
      let timer: Timer | undefined;
      const done = () => {
        if (timer !== undefined) this.clock.clearTimeout(timer);
        this.#wakeHead = undefined;
        resolve();
      };
      const check = () => {
        timer = undefined;
        const ms = at - this.clock.now();
        if (ms <= 0 || entry.settled) done();
        else timer = this.clock.setTimeout(check, Math.min(Math.ceil(ms), MAX_TIMER_MS));
      };
      this.#wakeHead = done;
      check();
    });
  }

  /**
   * Waits until the latest start is on the wire (`onWire`), the head leaves, or `ON_WIRE_WAIT_MAX_MS`
   * passes (then the start counts as on the wire now).
   */
  #untilOnWire(): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = this.clock.setTimeout(() => this.#assumeOnWire(), ON_WIRE_WAIT_MAX_MS);
      const done = () => {
        this.clock.clearTimeout(timer);
        this.#wakeOnWire = undefined;
        this.#wakeHead = undefined;
        resolve();
      };
      this.#wakeOnWire = done;
      this.#wakeHead = done;
    });
  }

  /** Ms until a start would be allowed (pause included), for a request turned away. */
  async #probeDelayMs(): Promise<number> {
    const now = this.clock.now();
    const pauseMs = Math.max(0, this.pausedUntil - now);
    // A recent probe's answer still in the future is still right; reusing it keeps a flood of
    // rejected requests from costing one store round trip (Redis) each.
    if (this.#probedFreeAt > now + pauseMs) return this.#probedFreeAt - now;
    try {
      const answer = await this.#store.reserve(PROBE_MAX_DELAY_MS, pauseMs);
      if (answer.granted) return pauseMs; // A store that ignores the probe convention; harmless.
      this.#probedFreeAt = this.clock.now() + answer.delayMs;
      return answer.delayMs;
    } catch {
      return pauseMs; // The store is down: the pause is all that is known.
    }
  }
}
