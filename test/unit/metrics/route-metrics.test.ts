import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import { Metrics, SharedBudgetMetrics } from '../../../src/metrics/metrics.js';
import { createPacer } from '../../../src/pacing/pacer.js';

/** Every sample of `name` as `{labels: value}` text, e.g. `route=a,code=200 → 1`. */
async function samples(registry: Registry, name: string): Promise<Record<string, number>> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`${name} not registered`);
  const out: Record<string, number> = {};
  for (const v of (await metric.get()).values) {
    const labels = Object.entries(v.labels)
      .map(([k, l]) => `${k}=${l}`)
      .join(',');
    out[labels] = v.value;
  }
  return out;
}

/** The samples whose value is not 0. */
function nonZero(values: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(values).filter(([, v]) => v !== 0));
}

const rateLimit = (windowMax: number) => ({
  perSecond: 10,
  burst: 1,
  window: { max: windowMax, length: 10_000 },
  queue: { max: 10, timeout: 30_000 },
});

describe('metrics by route', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 1_000_000 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("writes each route's values to its own series, and a shared token's to all its routes", async () => {
    const metrics = new Metrics(new Registry(), { defaultMetrics: false });
    const billing = metrics.forRoutes(['billing']);
    const crm = metrics.forRoutes(['crm']);
    const token = metrics.forRoutes(['billing', 'reports']);
    expect(metrics.forRoutes(['crm'])).toBe(crm); // one view per set of routes
    billing.upstreamResponse(200);
    billing.upstreamResponse(200);
    crm.upstreamResponse(503);
    crm.requestsRejected.inc({ reason: 'token_unavailable' });
    token.tokenRefreshes.inc({ result: 'success' });
    token.tokenExpiry.set(1234);
    const registry = metrics.registry;
    expect(await samples(registry, 'm2m_proxy_upstream_responses_total')).toEqual({
      'route=billing,code=200': 2,
      'route=crm,code=503': 1,
    });
    // Fixed-label counters exist at 0 for every route from the start; only the writes count.
    expect(nonZero(await samples(registry, 'm2m_proxy_requests_rejected_total'))).toEqual({
      'route=crm,reason=token_unavailable': 1,
    });
    expect(await samples(registry, 'm2m_proxy_requests_rejected_total')).toHaveProperty(
      'route=billing,reason=rate_limited',
      0,
    );
    expect(nonZero(await samples(registry, 'm2m_proxy_token_refreshes_total'))).toEqual({
      'route=billing,result=success': 1,
      'route=reports,result=success': 1,
    });
    expect(await samples(registry, 'm2m_proxy_token_refreshes_total')).toHaveProperty(
      'route=crm,result=failure',
      0,
    );
    // 0 from the start for every route, until a token is held.
    expect(await samples(registry, 'm2m_proxy_token_expiry_timestamp_seconds')).toEqual({
      'route=billing': 1234,
      'route=crm': 0,
      'route=reports': 1234,
    });
  });

  it("reads each route's sliding window at scrape time, one pacer per route", async () => {
    const metrics = new Metrics(new Registry(), { defaultMetrics: false });
    const a = createPacer(rateLimit(5), {
      clock: systemClock,
      metrics: metrics.forRoutes(['a']),
    });
    const b = createPacer(rateLimit(3), {
      clock: systemClock,
      metrics: metrics.forRoutes(['b']),
    });
    await a.acquire({ deadline: Number.POSITIVE_INFINITY });
    a.onWire();
    expect(await samples(metrics.registry, 'm2m_proxy_window_remaining')).toEqual({
      'route=a': 4,
      'route=b': 3,
    });
    // a's start leaves its window (10 s plus the 1 % wire margin the store adds).
    await vi.advanceTimersByTimeAsync(10_101);
    expect(await samples(metrics.registry, 'm2m_proxy_window_remaining')).toEqual({
      'route=a': 5,
      'route=b': 3,
    });
    await Promise.all([a.close(), b.close()]);
  });

  it('registers the shared-budget metrics once for several keys, each under its routes', async () => {
    const registry = new Registry();
    const one = new SharedBudgetMetrics(registry, ['a', 'b']);
    const two = new SharedBudgetMetrics(registry, ['c']);
    one.up.set(1);
    two.up.set(0);
    two.errors.inc();
    expect(await samples(registry, 'm2m_proxy_shared_budget_up')).toEqual({
      'route=a': 1,
      'route=b': 1,
      'route=c': 0,
    });
    expect(await samples(registry, 'm2m_proxy_shared_budget_errors_total')).toEqual({
      'route=a': 0,
      'route=b': 0,
      'route=c': 1,
    });
  });
});
