/*
 * Longer than the project's ~300 lines on purpose: one Redis connection's whole protocol
 * (reservation, heartbeat, ping, the clock offset to Redis `TIME`, waiting for a reconnect, the
 * command timeout) shares the connection state; the script itself is `reserve-script.ts`.
 */
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { inspect } from 'node:util';
import { Redis, type RedisOptions } from 'ioredis';
import { type Clock, systemClock } from '../clock.js';
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
import type { Reservation, SlotLimits, SlotStore } from './types.js';

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
  /** The command timeout's timer; the system clock when absent. */
  clock?: Clock | undefined;
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
  readonly #clock: Clock;
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
   * For the latest granted reservation: how much earlier than its release time the reserved
   * instant may really have been on Redis's clock (the estimate's error, the rounding up).
   */
  #skewMs = 0;
  /**
   * `performance.now()` the latest granted reservation is released at. Lateness is also measured
   * from here, on this store's clock: the caller's own reading of the release time is taken
   * later, and a stall in between (a preempted or frozen process) would hide in it.
   */
  #releaseAt = Number.NEGATIVE_INFINITY;
  #closing = false;
  /** True once the first connection is ready: until then a call waits for the connect timeout. */
  #connectedOnce = false;

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
    this.#clock = options.clock ?? systemClock;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.#where = describeUrl(options.url);
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

  /** Reserves a start in the fleet's budget; rejects with `SharedBudgetError` on any Redis failure. */
  async reserve(maxDelayMs: number, notBeforeMs: number): Promise<Reservation> {
    const {
      startUs: _s,
      redisNowUs: _n,
      ...reservation
    } = await this.reserveDetailed(maxDelayMs, notBeforeMs);
    return reservation;
  }

  /** Like `reserve`, with the Redis-time start and `TIME` of the script. */
  async reserveDetailed(maxDelayMs: number, notBeforeMs: number): Promise<DetailedReservation> {
    const began = performance.now();
    let reply: ReserveReply;
    try {
      await this.#whenReady();
      const raw = await this.#call(
        (this.#client as unknown as ReserveCommander)[COMMAND](
          ...this.#keys,
          ...reserveArgs(this.#limits, maxDelayMs, notBeforeMs),
        ),
      );
      reply = parseReserveReply(raw);
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
    const reservation: DetailedReservation = {
      granted: reply.granted,
      // Whole milliseconds, rounded up: a timer never fires before the reserved start.
      delayMs,
      startUs: reply.startUs,
      redisNowUs: reply.nowUs,
    };
    if (reply.granted) {
      // The pacer counts lateness from `now + delayMs`; the reserved instant may have been this
      // much earlier (the clock estimate's error, the rounding up to whole milliseconds).
      const earliest = this.#offset.earliestLocalTimeOf(
        (reply.nowUs + reply.delayUs) / 1000,
        began,
        reply.nowUs / 1000,
      );
      this.#releaseAt = now + delayMs;
      this.#skewMs = Math.max(0, this.#releaseAt - earliest);
    }
    if (reply.windowRemaining !== undefined) reservation.windowRemaining = reply.windowRemaining;
    return reservation;
  }

  /**
   * See `SlotStore.mayStart`: on time when the lateness plus the clock's doubt is within
   * `LATE_TOLERANCE_MS`; otherwise the slot is forfeited (counted) and the request reserves again.
   */
  mayStart(lateMs: number): boolean {
    const late = Math.max(lateMs, performance.now() - this.#releaseAt);
    if (late + this.#skewMs <= LATE_TOLERANCE_MS) return true;
    this.#metrics.forfeits.inc();
    this.#logger?.debug({
      event: 'shared_slot_forfeited',
      lateMs: Math.round(late * 10) / 10,
      clockDoubtMs: Math.round(this.#skewMs * 10) / 10,
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
