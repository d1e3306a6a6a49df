/*
 * Longer than the project's ~300 lines on purpose: the switch between the shared and the local
 * budget is one state machine (up/down, the hold after a switch, the probes, the heartbeats that
 * give this replica's share, the forfeited grant to give back) whose transitions all happen in
 * `#markDown` and `#markUp`; splitting it would spread that state over files.
 */
import type { Clock, Timer } from '../clock.js';
import type { Audit } from '../log/audit.js';
import type { Logger } from '../log/logger.js';
import type { SharedBudgetMetrics } from '../metrics/metrics.js';
import { HEARTBEAT_INTERVAL_MS, type SharedSlotStore } from './redis-slot-store.js';
import type { Grant, Reservation, SlotStore } from './types.js';

/**
 * 1 s between probes while Redis is unreachable: a replica is back on the shared budget within
 * about a second of Redis answering, and a probe is one PING per second per replica (or an
 * immediate local failure while ioredis is still reconnecting).
 */
const DEFAULT_PROBE_INTERVAL_MS = 1000;

/**
 * The share a replica uses alone when Redis is unreachable from its start and `fallback` is not
 * set: it has never seen how many replicas share the key, so it assumes ten. A fleet larger than
 * that which must start during an outage sets `rateLimit.shared.fallback`.
 */
const UNKNOWN_FLEET_SHARE = 0.1;

/**
 * 1 s: after a switch either way, the first start waits this long after the last start made on
 * the other side (the fleet's schedule in Redis, or this replica's own budget). Neither side
 * knows the other's starts; a second apart, no sliding second holds starts of both.
 */
export const SWITCH_HOLD_MS = 1000;

/**
 * 200 ms: the first probe after a switch to local pacing. A replica that only believed Redis down
 * (its own stall outlasted the command timeout while Redis answered the others) is back on the
 * shared budget well within `SWITCH_HOLD_MS`, before it ever started a request alone beside the
 * fleet; the later probes follow `probeIntervalMs`.
 */
const FIRST_PROBE_MS = 200;

/** Heartbeats sent 200 ms apart after start-up, before the regular interval. */
const EARLY_BEATS = 5;

/** The handle of one grant (`Reservation.grant`): the side that made it, and its own handle. */
class FallbackGrant {
  constructor(
    /** The shared store, or the local store in use when it was granted. */
    readonly store: SlotStore,
    readonly inner: Grant | undefined,
  ) {}
}

/** What `FallbackSlotStore` is built from. */
export interface FallbackSlotStoreOptions {
  /** The fleet's budget (Redis). */
  shared: SharedSlotStore;
  /**
   * Builds this replica's own budget at `share` × the limits, used while `shared` is
   * unreachable; called at each switch to local pacing, with the share known then.
   */
  localFor: (share: number) => SlotStore;
  /** `rateLimit.shared.fallback`: the most a replica takes alone, whatever the replica count. */
  fallback?: number | undefined;
  clock: Clock;
  logger: Logger;
  metrics: SharedBudgetMetrics;
  /** The budget's key, for the log lines. */
  key: string;
  probeIntervalMs?: number | undefined;
  /** Records `shared_budget_lost` / `shared_budget_restored` in the audit trail. */
  audit?: Audit | undefined;
  /** Between two announcements of this replica on the key; see `HEARTBEAT_INTERVAL_MS`. */
  heartbeatIntervalMs?: number | undefined;
}

/**
 * Reserves in the shared budget while Redis answers and in a local budget while it does not
 * (no request fails because Redis is down), and keeps the fleet within the budget meanwhile.
 *
 * While up, the replica announces itself on the key every `heartbeatIntervalMs` and learns how
 * many replicas share it. The first failed call (error, timeout or lost connection) switches to
 * local pacing at this replica's share: 1 / the replicas last seen, never above `fallback` when
 * set (`fallback`, or `UNKNOWN_FLEET_SHARE` without it, when none was ever seen), so N replicas
 * that lose Redis together send at most the budget. The switch logs one `shared_budget_down`
 * warning (with the share) and the failed reservation is retried on the side in use once the
 * hold after the switch has passed (`SWITCH_HOLD_MS`). While down, Redis is probed after
 * `FIRST_PROBE_MS`, then every `probeIntervalMs`; the first answer switches back and logs one
 * `shared_budget_up`. Requests never call Redis while down, so an outage costs them nothing.
 * Both switches happen in `#markDown` and `#markUp` only.
 */
export class FallbackSlotStore implements SlotStore {
  readonly #shared: SharedSlotStore;
  readonly #localFor: (share: number) => SlotStore;
  readonly #fallback: number | undefined;
  #local: SlotStore | undefined;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #metrics: SharedBudgetMetrics;
  readonly #key: string;
  readonly #probeIntervalMs: number;
  readonly #audit: Audit | undefined;
  readonly #heartbeatIntervalMs: number;
  #up = true;
  /** Replicas on the key at the latest heartbeat; undefined until one answered. */
  #replicas: number | undefined;
  #probeTimer: Timer | undefined;
  #heartbeatTimer: Timer | undefined;
  #beats = 0;
  /** Clock ms of the latest start granted on the current side; see `SWITCH_HOLD_MS`. */
  #lastStartAt = Number.NEGATIVE_INFINITY;
  /** Clock ms before which no start is granted, after a switch. */
  #holdUntil = Number.NEGATIVE_INFINITY;
  /** A start was granted from the local budget since the latest switch to it. */
  #localSinceDown = false;
  /** Reservations waiting for the hold to end; a switch wakes them to look again. */
  readonly #holdWaiters = new Set<() => void>();
  #closed = false;

  constructor(options: FallbackSlotStoreOptions) {
    this.#shared = options.shared;
    this.#localFor = options.localFor;
    this.#fallback = options.fallback;
    this.#clock = options.clock;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#key = options.key;
    this.#probeIntervalMs = options.probeIntervalMs ?? DEFAULT_PROBE_INTERVAL_MS;
    this.#audit = options.audit;
    this.#heartbeatIntervalMs = options.heartbeatIntervalMs ?? HEARTBEAT_INTERVAL_MS;
    this.#metrics.up.set(1);
    this.#metrics.replicas.set(0);
    this.#metrics.fallbackShare.set(this.share);
    this.#shared.onConnectionLost((error) => this.#markDown(error));
    // Find out now rather than at the first request whether Redis is there, so the gauge is true.
    void this.#probe();
    void this.#heartbeat();
  }

  /** True while reservations go to the shared budget. */
  get usingShared(): boolean {
    return this.#up;
  }

  /**
   * The share of the limits this replica uses alone while Redis is unreachable: 1 / the replicas
   * last seen on the key, at most `fallback`; `fallback` or `UNKNOWN_FLEET_SHARE` before any.
   */
  get share(): number {
    const cap = this.#fallback ?? 1;
    if (this.#replicas === undefined) return this.#fallback ?? UNKNOWN_FLEET_SHARE;
    return Math.min(cap, 1 / this.#replicas);
  }

  /**
   * See `SlotStore.reserve`. Right after a switch (either way) nothing is granted until the hold
   * ends (`SWITCH_HOLD_MS`): the store waits it out, then reserves on the side in use by then. A
   * grant made at once for the end of the hold would stand even if the replica switched back
   * meanwhile, and a shared grant that far ahead would hold the whole fleet back.
   */
  async reserve(
    maxDelayMs: number,
    notBeforeMs: number,
    signal?: AbortSignal,
  ): Promise<Reservation> {
    const asked = this.#clock.now();
    for (;;) {
      const now = this.#clock.now();
      // The time already spent waiting (for the hold, for a shared slot) counts.
      const maxDelay = maxDelayMs < 0 ? maxDelayMs : Math.max(0, maxDelayMs - (now - asked));
      const notBefore = notBeforeMs - (now - asked);
      const holdMs = this.#holdUntil - now;
      // (A hold beyond the request's queue time goes to the store, which refuses it with the
      // right Retry-After; so does a probe.)
      if (holdMs > 0 && maxDelay >= holdMs) {
        await this.#waitHold(holdMs, signal);
        continue;
      }
      if (this.#up) {
        try {
          const reservation = await this.#shared.reserve(
            maxDelay,
            this.#notBefore(notBefore),
            signal,
          );
          return reservation.granted ? this.#granted(reservation, this.#shared) : reservation;
        } catch (error) {
          // The request left while the shared store waited for its slot: not a Redis failure.
          if (signal?.aborted) throw signal.reason;
          this.#markDown(error);
          continue;
        }
      }
      const local = this.#localStore();
      const reservation = await local.reserve(maxDelay, this.#notBefore(notBefore));
      return reservation.granted ? this.#granted(reservation, local) : reservation;
    }
  }

  /** Sleeps `ms`, or less when a switch changes the hold; rejects when `signal` aborts. */
  #waitHold(ms: number, signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      let timer: Timer | undefined;
      const settle = () => {
        if (timer !== undefined) this.#clock.clearTimeout(timer);
        this.#holdWaiters.delete(wake);
        signal?.removeEventListener('abort', onAbort);
      };
      const wake = () => {
        settle();
        resolve();
      };
      const onAbort = () => {
        settle();
        reject(signal?.reason);
      };
      timer = this.#clock.setTimeout(wake, ms);
      this.#holdWaiters.add(wake);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  #notBefore(notBeforeMs: number): number {
    return Math.max(notBeforeMs, this.#holdUntil - this.#clock.now());
  }

  /** Notes a grant of `store` (for the hold) and wraps its handle with the side that made it. */
  #granted(reservation: Reservation, store: SlotStore): Reservation {
    if (store !== this.#shared) this.#localSinceDown = true;
    this.#lastStartAt = this.#clock.now() + reservation.delayMs;
    return { ...reservation, grant: new FallbackGrant(store, reservation.grant) };
  }

  /** At a switch: the first start on the new side keeps `SWITCH_HOLD_MS` from the old side's. */
  #hold(): void {
    this.#setHold();
    // Reservations waiting out the previous hold look again: side and hold have changed.
    for (const wake of [...this.#holdWaiters]) wake();
  }

  #setHold(): void {
    // Nothing granted yet (Redis down from the start): no start of this replica to keep away from.
    if (this.#lastStartAt === Number.NEGATIVE_INFINITY) return;
    // Back on the shared budget without a local start since the switch (an outage shorter than
    // the hold, or one this replica only believed in): nothing of its own to keep away from.
    if (this.#up && !this.#localSinceDown) {
      this.#holdUntil = Number.NEGATIVE_INFINITY;
      return;
    }
    // Leaving the shared side (now down): its latest start may be another replica's, up to now.
    const last = this.#up ? this.#lastStartAt : Math.max(this.#lastStartAt, this.#clock.now());
    this.#holdUntil = last + SWITCH_HOLD_MS;
  }

  /** See `SlotStore.mayStart`: asks the store that made `grant`, about that grant. */
  mayStart(grant: Grant, lateMs: number): boolean {
    if (!(grant instanceof FallbackGrant) || grant.inner === undefined) return true;
    return grant.store.mayStart?.(grant.inner, lateMs) ?? true;
  }

  /**
   * See `SlotStore.onWireLate`: only a local store can move a recorded start (one replaced since,
   * at a later switch, is no longer used and changes nothing).
   */
  onWireLate(grant: Grant, lateMs: number): void {
    if (!(grant instanceof FallbackGrant) || grant.inner === undefined) return;
    if (grant.store !== this.#shared) grant.store.onWireLate?.(grant.inner, lateMs);
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#probeTimer !== undefined) this.#clock.clearTimeout(this.#probeTimer);
    if (this.#heartbeatTimer !== undefined) this.#clock.clearTimeout(this.#heartbeatTimer);
    this.#probeTimer = undefined;
    this.#heartbeatTimer = undefined;
    await Promise.all([this.#shared.close(), this.#local?.close()]);
  }

  /** The local budget; made at the share known when the first local reservation needs it. */
  #localStore(): SlotStore {
    this.#local ??= this.#localFor(this.share);
    return this.#local;
  }

  // The switch to local pacing: the one place it happens (log line, gauges, new local budget).
  #markDown(error: unknown): void {
    if (this.#closed || !this.#up) return;
    this.#up = false;
    this.#localSinceDown = false;
    this.#hold();
    this.#metrics.up.set(0);
    const reason = error instanceof Error ? error.message : String(error);
    const share = this.share;
    this.#metrics.fallbackShare.set(share);
    // A fresh local budget at the share known now (the fleet may have grown or shrunk since the
    // previous outage).
    const previous = this.#local;
    this.#local = this.#localFor(share);
    void previous?.close();
    this.#logger.warn(
      {
        event: 'shared_budget_down',
        key: this.#key,
        share,
        replicas: this.#replicas ?? null,
        reason,
      },
      "shared pacing budget unreachable: pacing locally at this replica's share of the limits",
    );
    this.#audit?.sharedBudgetLost(this.#key, reason);
    this.#scheduleProbe(Math.min(FIRST_PROBE_MS, this.#probeIntervalMs));
  }

  // The switch back to the shared budget: the one place it happens.
  #markUp(): void {
    if (this.#closed || this.#up) return;
    this.#up = true;
    this.#hold();
    this.#metrics.up.set(1);
    this.#logger.info(
      { event: 'shared_budget_up', key: this.#key },
      'shared pacing budget reachable again: pacing with the fleet',
    );
    this.#audit?.sharedBudgetRestored(this.#key);
    void this.#heartbeat();
  }

  #scheduleProbe(delayMs = this.#probeIntervalMs): void {
    if (this.#closed || this.#probeTimer !== undefined) return;
    this.#probeTimer = this.#clock.setTimeout(() => {
      this.#probeTimer = undefined;
      void this.#probe();
    }, delayMs);
    this.#probeTimer.unref?.();
  }

  async #probe(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#shared.ping();
      this.#markUp();
    } catch (error) {
      if (this.#up) this.#markDown(error);
      else this.#scheduleProbe();
    }
  }

  /**
   * Announces this replica and reads the replica count, then beats again after the interval
   * while Redis is in use (the probe restarts it after an outage). A failed beat changes nothing:
   * reservations and probes decide whether Redis is down, and the count last seen stays.
   */
  async #heartbeat(): Promise<void> {
    if (this.#closed || !this.#up) return;
    if (this.#heartbeatTimer !== undefined) this.#clock.clearTimeout(this.#heartbeatTimer);
    // The first beats come quickly: each is also a sample of Redis's clock, and a replica that
    // has just started needs a good one before its first starts (see `LATE_TOLERANCE_MS`).
    this.#beats++;
    const delayMs =
      this.#beats <= EARLY_BEATS
        ? Math.min(200, this.#heartbeatIntervalMs)
        : this.#heartbeatIntervalMs;
    this.#heartbeatTimer = this.#clock.setTimeout(() => {
      this.#heartbeatTimer = undefined;
      void this.#heartbeat();
    }, delayMs);
    this.#heartbeatTimer.unref?.();
    try {
      const replicas = await this.#shared.heartbeat();
      if (this.#closed || !this.#up) return;
      this.#replicas = replicas;
      this.#metrics.replicas.set(replicas);
      this.#metrics.fallbackShare.set(this.share);
    } catch {
      // Counted in m2m_proxy_shared_budget_errors_total by the store.
    }
  }
}
