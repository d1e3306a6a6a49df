import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../fixtures/process.js';
import { CHART_METRIC_NAMES } from '../helm/metric-names.js';
import { startWorld, type World } from './world.js';

/** The fixed metric names and labels (docs/metrics.md). */
const DOCUMENTED = {
  m2m_proxy_token_refreshes_total: ['counter', ['route', 'result']],
  m2m_proxy_token_refresh_failures_total: ['counter', ['route', 'reason']],
  m2m_proxy_token_expiry_timestamp_seconds: ['gauge', ['route']],
  m2m_proxy_upstream_responses_total: ['counter', ['route', 'code']],
  m2m_proxy_upstream_request_duration_seconds: ['histogram', ['route']],
  m2m_proxy_requests_rejected_total: ['counter', ['route', 'reason']],
  m2m_proxy_queue_length: ['gauge', ['route']],
  m2m_proxy_queue_wait_seconds: ['histogram', ['route']],
  m2m_proxy_build_info: ['gauge', ['version', 'node']],
} as const;

/** `# TYPE name type` lines of a Prometheus text exposition. */
function types(text: string): Map<string, string> {
  return new Map(
    [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1] as string, m[2] as string]),
  );
}

describe('/metrics of a running proxy', () => {
  let world: World;
  let text: string;
  beforeAll(async () => {
    // A shared budget whose Redis is unreachable: the fleet metrics are registered, the proxy
    // paces alone, and nothing fails.
    world = await startWorld({
      proxy: {
        rateLimit: {
          shared: { redis: `redis://127.0.0.1:${await freePort()}/0`, key: 'metrics-test' },
        },
      },
    });
    await fetch(`${world.proxy.url}/status/401`); // replayed once after a renewal: two 401s
    await fetch(`${world.proxy.url}/status/403`);
    text = await (await fetch(`${world.proxy.adminUrl}/metrics`)).text();
  });
  afterAll(() => world?.close());

  it('exports every metric of the contract with its type and labels', () => {
    const exported = types(text);
    for (const [name, [type, labels]] of Object.entries(DOCUMENTED)) {
      expect(exported.get(name), name).toBe(type);
      // A histogram's series are its `_count`, `_sum` and `_bucket` lines.
      const sample = type === 'histogram' ? `${name}_count{` : `${name}{`;
      const series = text.split('\n').filter((l) => l.startsWith(sample));
      if (name === 'm2m_proxy_token_refresh_failures_total') {
        // Its reasons are open-ended (OAuth codes): no failure happened, so no series yet.
        expect(series, name).toEqual([]);
        continue;
      }
      // Fixed label sets are exported at 0 from the start; `code` has the 401s and 403 below.
      if (labels.length > 0) expect(series.length, name).toBeGreaterThan(0);
      for (const label of labels) {
        for (const line of series) expect(line).toContain(`${label}="`);
      }
    }
    expect(text).toMatch(/^m2m_proxy_upstream_responses_total\{route="default",code="401"\} 2$/m);
    expect(text).toMatch(/^m2m_proxy_upstream_responses_total\{route="default",code="403"\} 1$/m);
    expect(text).toMatch(
      /^m2m_proxy_token_refreshes_total\{route="default",result="success"\} 2$/m,
    );
    expect(text).toMatch(/^process_resident_memory_bytes /m); // prom-client's default metrics
  });

  it('exports every name the Helm chart alerts and dashboard use', () => {
    const exported = types(text);
    for (const name of CHART_METRIC_NAMES) expect(exported.has(name), name).toBe(true);
  });

  it('never exposes a secret or a token', () => {
    for (const secret of world.secrets()) expect(text).not.toContain(secret);
  });
});
