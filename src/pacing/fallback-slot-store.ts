import type { Clock, Timer } from '../clock.js';
import type { Audit } from '../log/audit.js';
import type { Logger } from '../log/logger.js';
import type { SharedBudgetMetrics } from '../metrics/metrics.js';
import type { SharedSlotStore } from './redis-slot-store.js';
import type { Reservation, SlotStore } from './types.js';

/**
 * 1 s between probes while Redis is unreachable: a replica is back on the shared budget within
 * about a second of Redis answering, and a probe is one PING per second per replica (or an
 * immediate local failure while ioredis is still reconnecting).
 */
export const DEFAULT_PROBE_INTERVAL_MS = 1000;

/** What `FallbackSlotStore` is built from. */
export interface FallbackSlotStoreOptions {
  /** The fleet's budget (Redis). */
  shared: SharedSlotStore;
  /** This replica's own budget at `fallback` × the limits, used while `shared` is unreachable. */
  local: SlotStore;
  clock: Clock;
  logger: Logger;
  metrics: SharedBudgetMetrics;
  /** The budget's key, for the log lines. */
  key: string;
  probeIntervalMs?: number | undefined;
  /** Records `shared_budget_lost` / `shared_budget_restored` in the audit trail. */
  audit?: Audit | undefined;
}

/**
 * Reserves in the shared budget while Redis answers and in a local budget while it does not
 * (docs/fleet.md, "When Redis is unreachable": no request fails because Redis is down).
 *
 * The first failed call (error, timeout or lost connection) switches to local pacing and logs
 * one `shared_budget_down` warning; the failed reservation is retried locally at once. While
 * down, Redis is probed every `probeIntervalMs`; the first answer switches back and logs one
 * `shared_budget_up`. Requests never call Redis while down, so an outage costs each of them
 * nothing.
 */
export class FallbackSlotStore implements SlotStore {
  readonly #shared: SharedSlotStore;
  readonly #local: SlotStore;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #metrics: SharedBudgetMetrics;
  readonly #key: string;
  readonly #probeIntervalMs: number;
  readonly #audit: Audit | undefined;
  #up = true;
  #probeTimer: Timer | undefined;
  #closed = false;

  constructor(options: FallbackSlotStoreOptions) {
    this.#shared = options.shared;
    this.#local = options.local;
    this.#clock = options.clock;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#key = options.key;
    this.#probeIntervalMs = options.probeIntervalMs ?? DEFAULT_PROBE_INTERVAL_MS;
    this.#audit = options.audit;
    this.#metrics.up.set(1);
    this.#shared.onConnectionLost((error) => this.#markDown(error));
    // Find out now rather than at the first request whether Redis is there, so the gauge is true.
    void this.#probe();
  }

  /** True while reservations go to the shared budget. */
  get usingShared(): boolean {
    return this.#up;
  }

  async reserve(maxDelayMs: number, notBeforeMs: number): Promise<Reservation> {
    if (this.#up) {
      try {
        return await this.#shared.reserve(maxDelayMs, notBeforeMs);
      } catch (error) {
        this.#markDown(error);
      }
    }
    return this.#local.reserve(maxDelayMs, notBeforeMs);
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#probeTimer !== undefined) this.#clock.clearTimeout(this.#probeTimer);
    this.#probeTimer = undefined;
    await Promise.all([this.#shared.close(), this.#local.close()]);
  }

  #markDown(error: unknown): void {
    if (this.#closed || !this.#up) return;
    this.#up = false;
    this.#metrics.up.set(0);
    const reason = error instanceof Error ? error.message : String(error);
    this.#logger.warn(
      { event: 'shared_budget_down', key: this.#key, reason },
      'shared pacing budget unreachable: pacing locally at the fallback share of the limits',
    );
    this.#audit?.sharedBudgetLost(this.#key, reason);
    this.#scheduleProbe();
  }

  #markUp(): void {
    if (this.#closed || this.#up) return;
    this.#up = true;
    this.#metrics.up.set(1);
    this.#logger.info(
      { event: 'shared_budget_up', key: this.#key },
      'shared pacing budget reachable again: pacing with the fleet',
    );
    this.#audit?.sharedBudgetRestored(this.#key);
  }

  #scheduleProbe(): void {
    if (this.#closed || this.#probeTimer !== undefined) return;
    this.#probeTimer = this.#clock.setTimeout(() => {
      this.#probeTimer = undefined;
      void this.#probe();
    }, this.#probeIntervalMs);
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
}
