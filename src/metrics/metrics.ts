/*
 * Longer than the project's ~300 lines on purpose: every metric name, label and help text in one
 * file (docs/metrics.md lists them; a test compares the two), which is the point of the file.
 */
import { PROXY_ERRORS } from '../proxy/errors.js';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from './prom-client.js';

/**
 * Every metric m2m-proxy exports, registered on one injected `Registry`. The names and labels of
 * the first block are fixed by the product's metric reference; dashboards and alerts depend on
 * them. Each carries a `route` label; the modules of a route write through `forRoutes`.
 */
export class Metrics {
  readonly registry: Registry;

  readonly tokenRefreshes: Counter<'route' | 'result'>;
  readonly tokenRefreshFailures: Counter<'route' | 'reason'>;
  readonly tokenExpiry: Gauge<'route'>;
  readonly upstreamResponses: Counter<'route' | 'code'>;
  readonly upstreamDuration: Histogram<'route'>;
  readonly requestsRejected: Counter<'route' | 'reason'>;
  readonly queueLength: Gauge<'route'>;
  readonly queueWait: Histogram<'route'>;

  /** Remaining starts in the current sliding window (`window.max` minus starts in the last `window.length`). */
  readonly windowRemaining: Gauge<'route'>;

  /** One view per set of routes, so that asking twice gives the same children and hooks. */
  readonly #views = new Map<string, RouteMetrics>();

  /**
   * The metrics as the modules of `routes` write them: every value goes to each route's series.
   * A token shared by several routes is every one of those routes' token, so its manager gets
   * all their names; everything else belongs to exactly one route.
   */
  forRoutes(routes: readonly string[]): RouteMetrics {
    const key = routes.join(',');
    let view = this.#views.get(key);
    if (!view) {
      view = new RouteMetrics(this, routes);
      this.#views.set(key, view);
    }
    return view;
  }

  /** `m2m_proxy_build_info{version,node}`, always 1: which build runs where. */
  readonly buildInfo: Gauge<'version' | 'node'>;

  constructor(
    registry: Registry = new Registry(),
    options: { defaultMetrics?: boolean; version?: string } = {},
  ) {
    this.registry = registry;
    const registers = [registry];
    this.tokenRefreshes = new Counter({
      name: 'm2m_proxy_token_refreshes_total',
      help: 'Token requests to the identity provider, by result.',
      labelNames: ['route', 'result'],
      registers,
    });
    this.tokenRefreshFailures = new Counter({
      name: 'm2m_proxy_token_refresh_failures_total',
      help: 'Failed token requests, by OAuth error code, http_<status>, timeout, network or invalid_response.',
      labelNames: ['route', 'reason'],
      registers,
    });
    this.tokenExpiry = new Gauge({
      name: 'm2m_proxy_token_expiry_timestamp_seconds',
      help: 'Expiry of the token held, in seconds since the epoch; 0 when no token is held.',
      labelNames: ['route'],
      registers,
    });
    this.upstreamResponses = new Counter({
      name: 'm2m_proxy_upstream_responses_total',
      help: 'Responses received from the upstream, by HTTP status code.',
      labelNames: ['route', 'code'],
      registers,
    });
    this.upstreamDuration = new Histogram({
      name: 'm2m_proxy_upstream_request_duration_seconds',
      help: 'Time from sending a request to the upstream until its response headers arrive.',
      // From 1 ms (loopback) to 30 s (the default upstream.timeout).
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      labelNames: ['route'],
      registers,
    });
    this.requestsRejected = new Counter({
      name: 'm2m_proxy_requests_rejected_total',
      help: "Responses m2m-proxy made itself instead of the upstream's, by error code.",
      labelNames: ['route', 'reason'],
      registers,
    });
    this.queueLength = new Gauge({
      name: 'm2m_proxy_queue_length',
      help: 'Requests waiting for a token or for a pacing slot.',
      labelNames: ['route'],
      registers,
    });
    this.queueWait = new Histogram({
      name: 'm2m_proxy_queue_wait_seconds',
      help: 'Time requests waited before being sent to the upstream.',
      // Pacing at 6/s makes waits of 1/6 s common; 30 s is the default queue.timeout.
      buckets: [0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30],
      labelNames: ['route'],
      registers,
    });
    this.windowRemaining = new Gauge({
      name: 'm2m_proxy_window_remaining',
      help: 'Starts still allowed in the current sliding window (rateLimit.window).',
      labelNames: ['route'],
      registers,
      // Each route's pacer may read its window at scrape time (`RouteGauge.collect`).
      collect: () => {
        for (const view of this.#views.values()) view.windowRemaining.collect?.();
      },
    });
    this.buildInfo = new Gauge({
      name: 'm2m_proxy_build_info',
      help: 'Always 1; the labels tell the m2m-proxy version and the Node.js version running it.',
      labelNames: ['version', 'node'],
      registers,
    });
    this.buildInfo.set({ version: options.version ?? 'unknown', node: process.versions.node }, 1);
    if (options.defaultMetrics !== false) collectDefaultMetrics(registry);
  }
}

/** A gauge of one route; `collect`, when set, is called before every scrape (see the pacer). */
export interface RouteGauge {
  set(value: number): void;
  collect?: (() => void) | undefined;
}

/** Calls every one of `writes` (one per route); a single route calls its own directly. */
function fan<A extends unknown[]>(writes: Array<(...args: A) => void>): (...args: A) => void {
  const [only] = writes;
  if (only && writes.length === 1) return only;
  return (...args) => {
    for (const write of writes) write(...args);
  };
}

/** `fan` per value of a metric's other label (`result`, `reason`, `code`), made on first use. */
function byValue(make: (value: string) => () => void): (value: string) => void {
  const writes = new Map<string, () => void>();
  return (value) => {
    let write = writes.get(value);
    if (!write) {
      write = make(value);
      writes.set(value, write);
    }
    write();
  };
}

/**
 * The metrics of one route (or of the routes sharing one token), with the shapes the token
 * manager, the pacer and the handler write. Label children are made once and kept: looking a
 * series up by its labels hashes them on every call otherwise.
 */
export class RouteMetrics {
  readonly tokenRefreshes: { inc(labels: { result: 'success' | 'failure' }): void };
  readonly tokenRefreshFailures: { inc(labels: { reason: string }): void };
  readonly tokenExpiry: { set(value: number): void };
  readonly upstreamDuration: { observe(seconds: number): void };
  readonly requestsRejected: { inc(labels: { reason: string }): void };
  readonly queueLength: { set(value: number): void };
  readonly queueWait: { observe(seconds: number): void };
  readonly windowRemaining: RouteGauge;
  readonly #response: (code: string) => void;

  constructor(
    metrics: Metrics,
    readonly routes: readonly string[],
  ) {
    const counter =
      <L extends string>(family: Counter<'route' | L>, label: L) =>
      (value: string) =>
        fan(
          routes.map((route) => {
            const child = family.labels({ route, [label]: value } as Record<'route' | L, string>);
            return () => child.inc();
          }),
        );
    const gauge = (family: Gauge<'route'>) =>
      fan(
        routes.map((route) => {
          const child = family.labels({ route });
          return (value: number) => child.set(value);
        }),
      );
    const histogram = (family: Histogram<'route'>) =>
      fan(
        routes.map((route) => {
          const child = family.labels({ route });
          return (value: number) => child.observe(value);
        }),
      );
    const results = byValue(counter(metrics.tokenRefreshes, 'result'));
    this.tokenRefreshes = { inc: ({ result }) => results(result) };
    const failures = byValue(counter(metrics.tokenRefreshFailures, 'reason'));
    this.tokenRefreshFailures = { inc: ({ reason }) => failures(reason) };
    this.tokenExpiry = { set: gauge(metrics.tokenExpiry) };
    // "0 when no token is held": a labelled gauge would otherwise have no series until the first.
    this.tokenExpiry.set(0);
    this.upstreamDuration = { observe: histogram(metrics.upstreamDuration) };
    const rejected = byValue(counter(metrics.requestsRejected, 'reason'));
    this.requestsRejected = { inc: ({ reason }) => rejected(reason) };
    this.queueLength = { set: gauge(metrics.queueLength) };
    this.queueWait = { observe: histogram(metrics.queueWait) };
    this.windowRemaining = { set: gauge(metrics.windowRemaining) };
    this.#response = byValue(counter(metrics.upstreamResponses, 'code'));
    // Counters with a fixed label set start at 0, so rate() and alerts see the series from the
    // first scrape instead of a gap that hides the first increment.
    for (const route of routes) {
      for (const result of ['success', 'failure'])
        metrics.tokenRefreshes.labels({ route, result }).inc(0);
      for (const reason of Object.keys(PROXY_ERRORS))
        metrics.requestsRejected.labels({ route, reason }).inc(0);
    }
  }

  /**
   * Counts one upstream response by status (`m2m_proxy_upstream_responses_total{code}`). A status
   * outside 100–599 is not HTTP's: it is counted as `other`, so a broken upstream cannot grow the
   * label set without bound.
   */
  upstreamResponse(status: number): void {
    this.#response(
      Number.isInteger(status) && status >= 100 && status <= 599 ? String(status) : 'other',
    );
  }
}

/**
 * Metrics of the shared (Redis) pacing budget (`rateLimit.shared`). A second class so
 * that they are registered only when a shared budget is configured: a proxy without Redis must
 * not export `m2m_proxy_shared_budget_up 0`, which would read as "Redis is down".
 */
export class SharedBudgetMetrics {
  /** 1 while reservations go to the shared budget in Redis, 0 while pacing locally (fallback). */
  readonly up: { set(value: number): void };
  /** Redis calls that failed or timed out: reservations, and the probes made while falling back. */
  readonly errors: { inc(): void };
  /** Round trip of one successful reservation script (EVALSHA) in seconds. */
  readonly reserveDuration: { observe(seconds: number): void };
  /** Replicas that announced themselves on the key within the heartbeat expiry (0 = not known yet). */
  readonly replicas: { set(value: number): void };
  /** The share of the limits this replica paces at alone while Redis is unreachable. */
  readonly fallbackShare: { set(value: number): void };
  /** Reserved starts given up because the replica reached them too late (a stall). */
  readonly forfeits: { inc(): void };
  /** Forfeited starts given back to the fleet's budget (nothing was granted after them). */
  readonly reclaims: { inc(): void };

  /**
   * The shared-budget metrics of `routes` (those drawing from one key), registered on `registry`
   * by the first store and reused by the next: several keys mean several stores in one process.
   */
  constructor(registry: Registry, routes: readonly string[] = ['default']) {
    const registers = [registry];
    const existing = (name: string) => registry.getSingleMetric(name);
    // Each metric has one child per route that draws from this key; every reading goes to all of
    // them. The first store registers a family, the next ones reuse it.
    const gauge = (name: string, help: string) => {
      const family =
        (existing(name) as Gauge<'route'> | undefined) ??
        new Gauge({ name, help, labelNames: ['route'], registers });
      const children = routes.map((route) => family.labels({ route }));
      return {
        set: (value: number) => {
          for (const child of children) child.set(value);
        },
      };
    };
    const counter = (name: string, help: string) => {
      const family =
        (existing(name) as Counter<'route'> | undefined) ??
        new Counter({ name, help, labelNames: ['route'], registers });
      const children = routes.map((route) => family.labels({ route }));
      // Exported at 0 from the start, as an unlabelled counter is: "none" is a reading too.
      for (const child of children) child.inc(0);
      return {
        inc: () => {
          for (const child of children) child.inc();
        },
      };
    };
    this.up = gauge(
      'm2m_proxy_shared_budget_up',
      'Whether the shared pacing budget in Redis is in use (1) or the replica paces alone at the fallback share (0).',
    );
    this.errors = counter(
      'm2m_proxy_shared_budget_errors_total',
      'Redis calls of the shared pacing budget that failed or timed out.',
    );
    const reserve =
      (existing('m2m_proxy_shared_budget_reserve_duration_seconds') as
        | Histogram<'route'>
        | undefined) ??
      new Histogram({
        name: 'm2m_proxy_shared_budget_reserve_duration_seconds',
        help: 'Round trip of one reservation in the shared pacing budget (one Lua script in Redis).',
        // 0.25 ms (same host) to 250 ms (the command timeout): where a healthy LAN Redis lives.
        buckets: [0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
        labelNames: ['route'],
        registers,
      });
    const durations = routes.map((route) => reserve.labels({ route }));
    this.reserveDuration = {
      observe: (seconds) => {
        for (const child of durations) child.observe(seconds);
      },
    };
    this.replicas = gauge(
      'm2m_proxy_shared_budget_replicas',
      'Replicas last seen on the shared budget key (heartbeats in Redis); 0 until first known.',
    );
    this.replicas.set(0);
    this.fallbackShare = gauge(
      'm2m_proxy_shared_budget_fallback_share',
      'Share of the limits this replica paces at alone while Redis is unreachable (1 / replicas last seen, capped by rateLimit.shared.fallback).',
    );
    this.forfeits = counter(
      'm2m_proxy_shared_budget_forfeits_total',
      'Starts reserved in the shared budget and given up because the replica reached them too late (a stall); the request reserves again.',
    );
    this.reclaims = counter(
      'm2m_proxy_shared_budget_reclaims_total',
      'Forfeited starts given back to the shared budget, as nothing had been granted after them (the slot was not lost).',
    );
  }
}
