import type { Clock } from '../clock.js';
import type { RouteMetrics } from '../metrics/metrics.js';

/** What every pacer needs. */
export interface PacerOptions {
  clock: Clock;
  metrics: RouteMetrics;
  /** `rateLimit.queue.max`: requests that may wait (for `ready` or a slot) at once. */
  queueMax: number;
  /** `rateLimit.queue.timeout` in ms: the cap of an upstream pause. */
  queueTimeoutMs: number;
}

/**
 * What both pacers share: admission bounds, the waiting count behind `m2m_proxy_queue_length`,
 * and the upstream pause.
 */
export abstract class BasePacer {
  protected readonly clock: Clock;
  protected readonly metrics: RouteMetrics;
  /** The admission limit; `queue.max: 0` still lets one request wait for the token. */
  protected readonly admitMax: number;
  /** `queue.max: 0` = the slot must be free now. */
  protected readonly noQueue: boolean;
  protected readonly queueTimeoutMs: number;
  protected pausedUntil = Number.NEGATIVE_INFINITY;
  protected closed = false;
  protected count = 0;

  constructor(options: PacerOptions) {
    this.clock = options.clock;
    this.metrics = options.metrics;
    this.admitMax = Math.max(1, options.queueMax);
    this.noQueue = options.queueMax === 0;
    this.queueTimeoutMs = options.queueTimeoutMs;
  }

  /** Requests currently waiting (for `ready`, a slot, or the end of an upstream pause). */
  get waiting(): number {
    return this.count;
  }

  /**
   * See `Pacer.pauseUntil`. Capped at `now + queue.timeout` (a `Retry-After: 3600` must not
   * block the sidecar for an hour; requests would time out anyway). A shorter pause never
   * shortens a longer one already in force.
   */
  pauseUntil(until: number): void {
    const capped = Math.min(until, this.clock.now() + this.queueTimeoutMs);
    if (capped > this.pausedUntil) this.pausedUntil = capped;
  }

  protected setWaiting(count: number): void {
    this.count = count;
    this.metrics.queueLength.set(count);
  }
}
