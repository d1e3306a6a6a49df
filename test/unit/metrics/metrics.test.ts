import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../../src/metrics/metrics.js';

const exposition = (m: Metrics) => m.registry.metrics();

describe('Metrics', () => {
  it('counts a status outside 100–599 as code="other"', async () => {
    const metrics = new Metrics(new Registry(), { defaultMetrics: false });
    const route = metrics.forRoutes(['default']);
    for (const status of [0, 99, 600, 999, 200, 599, 100]) route.upstreamResponse(status);
    const text = await exposition(metrics);
    expect(text).toMatch(/^m2m_proxy_upstream_responses_total\{route="default",code="other"\} 4$/m);
    expect(text).toMatch(/^m2m_proxy_upstream_responses_total\{route="default",code="200"\} 1$/m);
    expect(text).toMatch(/^m2m_proxy_upstream_responses_total\{route="default",code="599"\} 1$/m);
    expect(text).toMatch(/^m2m_proxy_upstream_responses_total\{route="default",code="100"\} 1$/m);
    expect(text).not.toMatch(/code="(0|99|600|999)"/);
  });

  it('exports build info with the version and the Node.js version', async () => {
    const metrics = new Metrics(new Registry(), { defaultMetrics: false, version: '1.2.3' });
    expect(await exposition(metrics)).toContain(
      `m2m_proxy_build_info{version="1.2.3",node="${process.versions.node}"} 1`,
    );
  });
});
