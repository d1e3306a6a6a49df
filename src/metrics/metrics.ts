import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/**
 * Every metric m2m-proxy exports, registered on one injected `Registry`. The names and labels of
 * the first block are fixed by CONTRACT.md ("Metrics"); dashboards and alerts depend on them.
 */
export class Metrics {
  readonly registry: Registry;

  readonly tokenRefreshes: Counter<'result'>;
  readonly tokenRefreshFailures: Counter<'reason'>;
  readonly tokenExpiry: Gauge;
  readonly upstreamResponses: Counter<'code'>;
  readonly upstreamDuration: Histogram;
  readonly requestsRejected: Counter<'reason'>;
  readonly queueLength: Gauge;
  readonly queueWait: Histogram;

  /** Counter children per status code: label lookups hash their values on every call otherwise. */
  readonly #responses = new Map<number, { inc(): void }>();

  /** Counts one upstream response by status (`m2m_proxy_upstream_responses_total{code}`). */
  upstreamResponse(status: number): void {
    let child = this.#responses.get(status);
    if (!child) {
      child = this.upstreamResponses.labels(String(status));
      this.#responses.set(status, child);
    }
    child.inc();
  }

  /** Remaining starts in the current sliding window (`window.max` minus starts in the last `window.length`). */
  readonly windowRemaining: Gauge;

  constructor(registry: Registry = new Registry(), options: { defaultMetrics?: boolean } = {}) {
    this.registry = registry;
    const registers = [registry];
    this.tokenRefreshes = new Counter({
      name: 'm2m_proxy_token_refreshes_total',
      help: 'Token requests to the identity provider, by result.',
      labelNames: ['result'],
      registers,
    });
    this.tokenRefreshFailures = new Counter({
      name: 'm2m_proxy_token_refresh_failures_total',
      help: 'Failed token requests, by OAuth error code, http_<status>, timeout, network or invalid_response.',
      labelNames: ['reason'],
      registers,
    });
    this.tokenExpiry = new Gauge({
      name: 'm2m_proxy_token_expiry_timestamp_seconds',
      help: 'Expiry of the token held, in seconds since the epoch; 0 when no token is held.',
      registers,
    });
    this.upstreamResponses = new Counter({
      name: 'm2m_proxy_upstream_responses_total',
      help: 'Responses received from the upstream, by HTTP status code.',
      labelNames: ['code'],
      registers,
    });
    this.upstreamDuration = new Histogram({
      name: 'm2m_proxy_upstream_request_duration_seconds',
      help: 'Time from sending a request to the upstream until its response headers arrive.',
      // From 1 ms (loopback) to 30 s (the default upstream.timeout).
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.requestsRejected = new Counter({
      name: 'm2m_proxy_requests_rejected_total',
      help: "Responses m2m-proxy made itself instead of the upstream's, by error code.",
      labelNames: ['reason'],
      registers,
    });
    this.queueLength = new Gauge({
      name: 'm2m_proxy_queue_length',
      help: 'Requests waiting for a token or for a pacing slot.',
      registers,
    });
    this.queueWait = new Histogram({
      name: 'm2m_proxy_queue_wait_seconds',
      help: 'Time requests waited before being sent to the upstream.',
      // Pacing at 6/s makes waits of 1/6 s common; 30 s is the default queue.timeout.
      buckets: [0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30],
      registers,
    });
    this.windowRemaining = new Gauge({
      name: 'm2m_proxy_window_remaining',
      help: 'Starts still allowed in the current sliding window (rateLimit.window).',
      registers,
    });
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  }
}

/**
 * Metrics of the shared (Redis) pacing budget (issue 7, `rateLimit.shared`). A second class so
 * that they are registered only when a shared budget is configured: a proxy without Redis must
 * not export `m2m_proxy_shared_budget_up 0`, which would read as "Redis is down".
 */
export class SharedBudgetMetrics {
  /** 1 while reservations go to the shared budget in Redis, 0 while pacing locally (fallback). */
  readonly up: Gauge;
  /** Redis calls that failed or timed out: reservations, and the probes made while falling back. */
  readonly errors: Counter;
  /** Round trip of one successful reservation script (EVALSHA) in seconds. */
  readonly reserveDuration: Histogram;
  /** Replicas that announced themselves on the key within the heartbeat expiry (0 = not known yet). */
  readonly replicas: Gauge;
  /** The share of the limits this replica paces at alone while Redis is unreachable. */
  readonly fallbackShare: Gauge;
  /** Reserved starts given up because the replica reached them too late (a stall). */
  readonly forfeits: Counter;

  constructor(registry: Registry) {
    const registers = [registry];
    this.up = new Gauge({
      name: 'm2m_proxy_shared_budget_up',
      help: 'Whether the shared pacing budget in Redis is in use (1) or the replica paces alone at the fallback share (0).',
      registers,
    });
    this.errors = new Counter({
      name: 'm2m_proxy_shared_budget_errors_total',
      help: 'Redis calls of the shared pacing budget that failed or timed out.',
      registers,
    });
    this.reserveDuration = new Histogram({
      name: 'm2m_proxy_shared_budget_reserve_duration_seconds',
      help: 'Round trip of one reservation in the shared pacing budget (one Lua script in Redis).',
      // 0.25 ms (same host) to 250 ms (the command timeout): where a healthy LAN Redis lives.
      buckets: [0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
      registers,
    });
    this.replicas = new Gauge({
      name: 'm2m_proxy_shared_budget_replicas',
      help: 'Replicas last seen on the shared budget key (heartbeats in Redis); 0 until first known.',
      registers,
    });
    this.fallbackShare = new Gauge({
      name: 'm2m_proxy_shared_budget_fallback_share',
      help: 'Share of the limits this replica paces at alone while Redis is unreachable (1 / replicas last seen, capped by rateLimit.shared.fallback).',
      registers,
    });
    this.forfeits = new Counter({
      name: 'm2m_proxy_shared_budget_forfeits_total',
      help: 'Starts reserved in the shared budget and given up because the replica reached them too late (a stall); the request reserves again.',
      registers,
    });
  }
}
