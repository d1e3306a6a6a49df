/*
 * Longer than the project's ~300 lines on purpose: one Redis connection's whole protocol
 * (reservation, heartbeat, ping, the clock offset to Redis `TIME`, waiting for a reconnect, the
 * command timeout) shares the connection state; the script itself is `reserve-script.ts`.
 */
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { inspect } from 'node:util';
import { Redis, type RedisOptions } from 'ioredis';
import { type Clock, sleep, systemClock } from '../clock.js';
import { M2mError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { SharedBudgetMetrics } from '../metrics/metrics.js';
import { ClockOffset } from './clock-offset.js';
import {
  HEARTBEAT_LUA,
  parseReserveReply,
  RESERVE_LUA,
  type ReserveReply,
  replicasKey,
  reserveArgs,
  reserveKeys,
} from './reserve-script.js';
import type { Grant, Reservation, SlotLimits, SlotStore } from './types.js';

/**
 * A `SlotStore` whose record lives outside the process and can therefore be unreachable. The
 * `FallbackSlotStore` watches it through these two extra members.
 */
export interface SharedSlotStore extends SlotStore {
  /** Resolves when the backing store answers now; rejects (quickly) when it does not. */
  ping(): Promise<void>;
  /** Registers a listener called when an established connection is lost. */
  onConnectionLost(listener: (error: Error) => void): void;
  /**
   * Announces this replica on the key and returns how many replicas announced themselves within
   * the expiry (itself included); rejects when the store does not answer.
   */
  heartbeat(): Promise<number>;
}

/** How to reach one shared budget in Redis. */
export interface RedisSlotStoreOptions extends SlotLimits {
  /** `redis://` or `rediss://` URL, without a password. */
  url: string;
  /** The Redis password (contents of `rateLimit.shared.passwordFile`); never logged. */
  password?: string | undefined;
  /** Replicas with the same key share one budget. */
  key: string;
  metrics: SharedBudgetMetrics;
  logger?: Logger | undefined;
  /** Per-call timeout in ms; see {@link DEFAULT_COMMAND_TIMEOUT_MS}. */
  commandTimeoutMs?: number | undefined;
  /** TCP + TLS + AUTH connect timeout in ms; see {@link DEFAULT_CONNECT_TIMEOUT_MS}. */
  connectTimeoutMs?: number | undefined;
  /**
   * Sleeps between asks for a slot that is not due yet, and the command timeout's timer; the
   * system clock by default.
   */
  clock?: Clock | undefined;
  /** Uniform in [0, 1): spreads the asks of waiting replicas; `Math.random` by default. */
  random?: (() => number) | undefined;
  /** See {@link LOOKAHEAD_MS}; tests and benches may change it. */
  lookaheadMs?: number | undefined;
}

/**
 * 250 ms. A reservation is one sub-millisecond script; a healthy Redis on the cluster network
 * answers in about 1 ms, so 250 ms is far beyond any healthy p99 (a GC pause or failover must not
 * flip a replica to fallback), yet short against the 30 s queue timeout. It is paid once, by the
 * request that discovers an outage; after that the replica paces locally without asking Redis.
 */
export const DEFAULT_COMMAND_TIMEOUT_MS = 250;

/** 1 s: TCP, TLS and AUTH to a Redis in the same cluster; longer only delays the fallback. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 1000;

/** Reconnect backoff: 100 ms, 200 ms, … capped at 1 s, so recovery is noticed within ~2 s. */
const retryStrategy = (times: number): number => Math.min(times * 100, 1000);

/**
 * 25 ms: how late a replica may start after its reserved slot (its own lateness plus what it
 * does not know about Redis's clock) and still start; later, it gives the slot up and reserves
 * again. The schedule keeps this in hand: slots are `WIRE_MARGIN` (1 %, i.e. 10 ms per second)
 * plus `(LATE_TOLERANCE_MS − 10 ms) / 1 s` (1.5 %) further apart than the limits require (see
 * `sharedLimits`), so `perSecond + burst` consecutive slots span at least 1025 ms, and with any
 * of them up to 25 ms late they still span 1000 ms on the wire. The window's length gets the
 * tolerance added. 10 ms alone (no extra margin) forfeited too many slots on a busy host, where a
 * process is often not scheduled for 10–20 ms.
 */
export const LATE_TOLERANCE_MS = 25;

/**
 * 50 ms: a slot is granted only to a replica that asks at most this long before the slot's start
 * (Redis time); asked earlier, Redis records nothing and says when the slot would be, and the
 * replica asks again shortly before it. A replica that stalls before asking loses nothing (another
 * replica takes the slot); only a stall inside the last 50 ms before its slot (plus the reply's
 * trip) costs the fleet that slot. Shorter would make the asks of waiting replicas arrive after the
 * slot's start on a busy host (timers fire 10–20 ms late there) and leave the slot partly unused.
 */
export const LOOKAHEAD_MS = 50;

/**
 * A replica told "not yet" asks again `LOOKAHEAD_MS` before the slot, plus a random part of it
 * between these fractions: 20–60 % of 50 ms puts the asks 40 to 20 ms before the start, early
 * enough for a late timer and the round trip, spread so that the replicas waiting for the same
 * slot do not arrive together, and so that none is always last (a longer round trip, a slower
 * node): whichever arrives first in the last 50 ms gets the slot. The random part is divided by
 * the number of "not yet" answers so far, so a replica that has waited longer asks earlier.
 */
const ASK_SPREAD = [0.2, 0.6] as const;

/**
 * Every 2 s a replica announces itself on the key; an announcement counts for 6 s (three missed
 * beats), so a replica that stopped leaves the count within 6 s and one slow beat does not.
 */
export const HEARTBEAT_INTERVAL_MS = 2000;
export const HEARTBEAT_EXPIRY_MS = 3 * HEARTBEAT_INTERVAL_MS;

const COMMAND = 'm2mProxyReserve';
const HEARTBEAT = 'm2mProxyHeartbeat';

/** The custom command that `defineCommand` adds at run time (EVALSHA, EVAL on NOSCRIPT). */
interface ReserveCommander {
  [COMMAND](state: string, starts: string, ...args: string[]): Promise<unknown>;
  [HEARTBEAT](replicas: string, id: string, expiryMs: string): Promise<unknown>;
}

/** A reservation with the Redis-time facts behind it (for tests, benches and debugging). */
export interface DetailedReservation extends Reservation {
  /** The reserved (or earliest allowed) start, Redis time in µs since the epoch. */
  startUs: number;
  /** Redis `TIME` when the script ran, µs since the epoch. */
  redisNowUs: number;
  /** Runs of the script this reservation took (1 unless the slot was not due at first). */
  asks: number;
}

/** The handle of one grant in Redis (`Reservation.grant`): what `mayStart` needs to judge it. */
class RedisGrant {
  constructor(
    /** The grant's name in Redis (`start-seq`), to give it back when it is forfeited. */
    readonly name: string | undefined,
    /**
     * `performance.now()` the grant is released at. Lateness is also measured from here, on this
     * store's clock: the caller's own reading of the release time is taken later, and a stall in
     * between (a preempted or frozen process) would hide in it.
     */
    readonly releaseAt: number,
    /**
     * How much earlier than `releaseAt` the reserved instant may really have been on Redis's
     * clock (the estimate's error, the rounding up).
     */
    readonly skewMs: number,
  ) {}
}

/** Error of a Redis call of the shared budget. Its message never contains the password. */
export class SharedBudgetError extends M2mError {
  readonly code = 'shared_budget_unavailable';
}

/**
 * The fleet's budget in Redis (docs/fleet.md): every replica with the same `key` reserves its start
 * times through one atomic Lua script that uses Redis `TIME`, so pod clocks do not matter.
 *
 * Fails fast while Redis is unreachable (no offline queue, no retry of a sent reservation,
 * a timeout on every call) and reconnects in the background; `FallbackSlotStore` turns
 * those failures into local pacing.
 */
export class RedisSlotStore implements SharedSlotStore {
  readonly #client: Redis;
  readonly #keys: [string, string];
  readonly #limits: SlotLimits;
  readonly #metrics: SharedBudgetMetrics;
  readonly #password: string | undefined;
  readonly #timeoutMs: number;
  readonly #connectTimeoutMs: number;
  readonly #where: string;
  readonly #lostListeners: ((error: Error) => void)[] = [];
  readonly #logger: Logger | undefined;
  /** Redis `TIME` − `performance.now()`, so reserved starts are released on Redis's clock. */
  readonly #offset = new ClockOffset();
  readonly #replicasKey: string;
  /** This process's name among the replicas on the key. */
  readonly #id = randomUUID();
  /**
   * A grant this replica forfeited (reached too late) and did not use: the next reservation
   * gives it back, which Redis accepts while nothing was granted after it (by any replica, or by
   * another route of this one sharing the store).
   */
  #forfeited: string | undefined;
  #closing = false;
  /** True once the first connection is ready: until then a call waits for the connect timeout. */
  #connectedOnce = false;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #lookaheadMs: number;

  constructor(options: RedisSlotStoreOptions) {
    this.#keys = reserveKeys(options.key);
    this.#replicasKey = replicasKey(options.key);
    this.#limits = {
      perSecond: options.perSecond,
      burst: options.burst,
      windowMax: options.windowMax,
      windowMs: options.windowMs,
    };
    this.#metrics = options.metrics;
    this.#password = options.password === '' ? undefined : options.password;
    this.#timeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.#where = describeUrl(options.url);
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#lookaheadMs = options.lookaheadMs ?? LOOKAHEAD_MS;
    const redisOptions: RedisOptions = {
      // No `commandTimeout`: ioredis would apply it to the connection's own AUTH, CLIENT SETNAME
      // and ready check too, and a first connection slower than 250 ms on a busy node would fail
      // instead of waiting for the connect timeout. Each call is timed here (`#call`).
      connectTimeout: this.#connectTimeoutMs,
      // Fail fast while disconnected instead of queueing reservations that would come back late.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      // A reservation that may have run must never run twice (it would take two slots).
      autoResendUnfulfilledCommands: false,
      retryStrategy,
      connectionName: 'm2m-proxy',
      lazyConnect: false,
    };
    if (this.#password !== undefined) redisOptions.password = this.#password;
    this.#client = new Redis(options.url, redisOptions);
    this.#client.defineCommand(COMMAND, { numberOfKeys: 2, lua: RESERVE_LUA });
    this.#client.defineCommand(HEARTBEAT, { numberOfKeys: 1, lua: HEARTBEAT_LUA });
    const logger = options.logger;
    this.#logger = logger;
    this.#client.on('error', (error: unknown) => {
      // ioredis reports every failed reconnect here; the one warn line comes from the fallback.
      logger?.debug({
        event: 'shared_budget_redis_error',
        redis: this.#where,
        reason: this.#reason(error),
      });
    });
    this.#client.on('ready', () => {
      this.#connectedOnce = true;
      // Loads the script on every (re)connection, ahead of the first reservation: otherwise that
      // reservation pays a NOSCRIPT round trip and the compile (~7 ms), after a Redis restart too.
      this.#client.script('LOAD', RESERVE_LUA).catch(() => undefined);
    });
    this.#client.on('close', () => {
      if (this.#closing) return;
      const error = new SharedBudgetError(`connection to ${this.#where} lost`);
      for (const listener of this.#lostListeners) listener(error);
    });
  }

  /**
   * Reserves a start in the fleet's budget; rejects with `SharedBudgetError` on any Redis failure,
   * or with the signal's reason when it aborts while waiting to ask again.
   */
  async reserve(
    maxDelayMs: number,
    notBeforeMs: number,
    signal?: AbortSignal,
  ): Promise<Reservation> {
    const {
      startUs: _s,
      redisNowUs: _n,
      asks: _a,
      ...reservation
    } = await this.reserveDetailed(maxDelayMs, notBeforeMs, signal);
    return reservation;
  }

  /**
   * Like `reserve`, with the Redis-time start and `TIME` of the script. A slot further away than
   * the lookahead is not granted: the store sleeps (on the injected clock, cancelled by `signal`)
   * until shortly before it and asks again, so the answer comes once a slot is granted or refused.
   * `maxDelayMs` and `notBeforeMs` count from this call.
   */
  async reserveDetailed(
    maxDelayMs: number,
    notBeforeMs: number,
    signal?: AbortSignal,
  ): Promise<DetailedReservation> {
    const asked = performance.now();
    for (let asks = 1; ; asks++) {
      signal?.throwIfAborted();
      const elapsed = performance.now() - asked;
      const answer = await this.#reserveOnce(
        // A probe (negative) stays a probe; a deadline that has passed allows only "now".
        maxDelayMs < 0 ? maxDelayMs : Math.max(0, maxDelayMs - elapsed),
        Math.max(0, notBeforeMs - elapsed),
      );
      if (!answer.later) {
        const { later: _l, ...reservation } = answer;
        return { ...reservation, asks };
      }
      // The longer this head has waited, the earlier in the spread it asks: the random part
      // shrinks with every "not yet", so a replica that lost a few times goes first (close to
      // first come, first served across the fleet) without any record of waiters in Redis.
      const [low, high] = ASK_SPREAD;
      const spread = (low + ((high - low) * this.#random()) / asks) * this.#lookaheadMs;
      await sleep(this.#clock, Math.max(1, answer.delayMs - this.#lookaheadMs + spread), signal);
    }
  }

  /** One run of the script: granted, refused, or "later" (not yet due, nothing recorded). */
  async #reserveOnce(
    maxDelayMs: number,
    notBeforeMs: number,
  ): Promise<Omit<DetailedReservation, 'asks'> & { later: boolean }> {
    const began = performance.now();
    let reply: ReserveReply;
    const reclaim = this.#forfeited;
    try {
      await this.#whenReady();
      const raw = await this.#call(
        (this.#client as unknown as ReserveCommander)[COMMAND](
          ...this.#keys,
          ...reserveArgs(this.#limits, maxDelayMs, notBeforeMs, this.#lookaheadMs, reclaim),
        ),
      );
      reply = parseReserveReply(raw);
      // Given back (or no longer the latest grant, then it stays recorded: the safe side).
      if (this.#forfeited === reclaim) this.#forfeited = undefined;
    } catch (error) {
      this.#metrics.errors.inc();
      throw new SharedBudgetError(`shared budget at ${this.#where}: ${this.#reason(error)}`);
    }
    const received = performance.now();
    this.#metrics.reserveDuration.observe((received - began) / 1000);
    // The script's delay counts from Redis's "now", somewhere inside the round trip. Counted
    // from when the answer arrived, a slow answer would start late and the next replica's start
    // (on time) would follow it too closely; on Redis's clock, every replica aims at one instant.
    const startLocal = this.#offset.localTimeOf(
      (reply.nowUs + reply.delayUs) / 1000,
      began,
      received,
      reply.nowUs / 1000,
    );
    const now = performance.now();
    const delayMs = Math.max(0, Math.ceil(startLocal - now));
    const reservation = {
      granted: reply.granted,
      later: reply.later,
      // Whole milliseconds, rounded up: a timer never fires before the reserved start.
      delayMs,
      startUs: reply.startUs,
      redisNowUs: reply.nowUs,
    } as Omit<DetailedReservation, 'asks'> & { later: boolean };
    if (reply.granted) {
      // The pacer counts lateness from `now + delayMs`; the reserved instant may have been this
      // much earlier (the clock estimate's error, the rounding up to whole milliseconds).
      const earliest = this.#offset.earliestLocalTimeOf(
        (reply.nowUs + reply.delayUs) / 1000,
        began,
        reply.nowUs / 1000,
      );
      const releaseAt = now + delayMs;
      reservation.grant = new RedisGrant(reply.name, releaseAt, Math.max(0, releaseAt - earliest));
    }
    if (reply.reclaimed) {
      this.#metrics.reclaims.inc();
      this.#logger?.debug({ event: 'shared_slot_reclaimed', slot: reclaim });
    }
    if (reply.windowRemaining !== undefined) reservation.windowRemaining = reply.windowRemaining;
    return reservation;
  }

  /**
   * See `SlotStore.mayStart`: on time when the lateness plus the clock's doubt is within
   * `LATE_TOLERANCE_MS`; otherwise `grant` is forfeited (counted) and the request reserves again.
   */
  mayStart(grant: Grant, lateMs: number): boolean {
    // Not a grant of this store: nothing to judge it by (a caller's mistake, not a stall).
    if (!(grant instanceof RedisGrant)) return true;
    const late = Math.max(lateMs, performance.now() - grant.releaseAt);
    if (late + grant.skewMs <= LATE_TOLERANCE_MS) return true;
    this.#metrics.forfeits.inc();
    // Not used: the caller does not send and reserves again, which gives this slot back (and no
    // other: the grant names it, whoever reserved last).
    this.#forfeited = grant.name;
    this.#logger?.debug({
      event: 'shared_slot_forfeited',
      lateMs: Math.round(late * 10) / 10,
      clockDoubtMs: Math.round(grant.skewMs * 10) / 10,
    });
    return false;
  }

  /** See `SharedSlotStore.heartbeat`; rejects with `SharedBudgetError` on any Redis failure. */
  async heartbeat(): Promise<number> {
    try {
      await this.#whenReady();
      const began = performance.now();
      const raw = await this.#call(
        (this.#client as unknown as ReserveCommander)[HEARTBEAT](
          this.#replicasKey,
          this.#id,
          String(HEARTBEAT_EXPIRY_MS),
        ),
      );
      const received = performance.now();
      const [count, nowUs] = Array.isArray(raw) ? (raw as unknown[]) : [];
      if (typeof count !== 'number' || !(count >= 1) || typeof nowUs !== 'number') {
        throw new Error('unexpected heartbeat reply');
      }
      // A round trip made off the request path, often while idle: the best samples of the clock.
      this.#offset.sample(began, received, nowUs / 1000);
      return count;
    } catch (error) {
      this.#metrics.errors.inc();
      throw new SharedBudgetError(`shared budget at ${this.#where}: ${this.#reason(error)}`);
    }
  }

  /** PING with the command timeout; rejects with `SharedBudgetError` when Redis does not answer. */
  async ping(): Promise<void> {
    try {
      await this.#whenReady();
      await this.#call(this.#client.ping());
    } catch (error) {
      this.#metrics.errors.inc();
      throw new SharedBudgetError(`shared budget at ${this.#where}: ${this.#reason(error)}`);
    }
  }

  onConnectionLost(listener: (error: Error) => void): void {
    this.#lostListeners.push(listener);
  }

  async close(): Promise<void> {
    this.#closing = true;
    // Nothing to flush: a reservation in flight is worth nothing once the process stops.
    this.#client.disconnect();
  }

  /**
   * Settles with the command's reply, or rejects after the command timeout. A command that timed
   * out may still run in Redis (a reservation then wastes its slot: the safe side). When the timer
   * fires, the rejection waits for one turn of the event loop (`setImmediate`, after the poll
   * phase): if the process was busy for longer than the timeout, a reply that has arrived
   * meanwhile is read and wins, instead of a healthy Redis being reported down.
   */
  #call<T>(command: Promise<T>): Promise<T> {
    const ms = this.#timeoutMs;
    return new Promise<T>((resolve, reject) => {
      const clock = this.#clock;
      const timer = clock.setTimeout(
        () => setImmediate(() => reject(new Error(`no answer within ${ms} ms`))),
        ms,
      );
      command.then(
        (reply) => {
          clock.clearTimeout(timer);
          resolve(reply);
        },
        (error: unknown) => {
          clock.clearTimeout(timer);
          reject(error);
        },
      );
    });
  }

  /**
   * While (re)connecting, waits for the connection instead of failing: up to the command timeout
   * on a reconnect, up to the connect timeout for the first connection. TCP, AUTH and the ready
   * check of a process that has just started can take longer than 250 ms on a busy node, and
   * falling back then would make a freshly started replica pace alone, beside the fleet, for the
   * probe interval.
   */
  async #whenReady(): Promise<void> {
    const status = this.#client.status;
    if (status === 'ready') return;
    if (status === 'end') throw new Error('connection closed');
    const waitMs = this.#connectedOnce ? this.#timeoutMs : this.#connectTimeoutMs;
    // Rejects on the first 'error' event too, so a refused connection fails at once.
    await once(this.#client, 'ready', { signal: AbortSignal.timeout(waitMs) }).catch(
      (error: unknown) => {
        throw error instanceof Error && error.name === 'AbortError'
          ? new Error(`not connected within ${waitMs} ms`)
          : error;
      },
    );
  }

  /** A one-line reason, with the password censored should any library ever echo it. */
  #reason(error: unknown): string {
    const message = error instanceof Error ? error.message : String(error);
    return this.#password ? message.split(this.#password).join('[redacted]') : message;
  }

  toJSON(): object {
    return { redis: this.#where, key: this.#keys[0], password: '[redacted]' };
  }

  [inspect.custom](): string {
    return `RedisSlotStore(${this.#where}, ${this.#keys[0]})`;
  }
}

/** `host:port/db` of a Redis URL: what logs and errors say, never user or password. */
export function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname === '/' ? '' : u.pathname}`;
  } catch {
    return 'redis';
  }
}
