import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/**
 * Metrics of the shared (Redis) pacing budget, registered on the injected `Registry` (issue 7).
 * Kept beside the shared store until the lead moves them into `src/metrics/metrics.ts`.
 */
export class SharedBudgetMetrics {
  /** 1 while reservations go to the shared budget in Redis, 0 while pacing locally (fallback). */
  readonly up: Gauge;
  /** Redis calls that failed or timed out: reservations, and the probes made while falling back. */
  readonly errors: Counter;
  /** Round trip of one successful reservation script (EVALSHA) in seconds. */
  readonly reserveDuration: Histogram;

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
  }
}
