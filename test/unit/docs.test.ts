import { readFileSync } from 'node:fs';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { PROXY_ERRORS } from '../../src/errors.js';
import { Metrics } from '../../src/metrics/metrics.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

describe('README', () => {
  it.each(Object.entries(PROXY_ERRORS))(
    'lists the error %s with its status',
    (code, { status }) => {
      expect(readme).toMatch(new RegExp(`^\\|\\s*${status}\\s*\\|\\s*\`${code}\`\\s*\\|`, 'm'));
    },
  );

  it('lists every m2m_proxy_ metric the proxy registers', async () => {
    const metrics = new Metrics(new Registry(), { defaultMetrics: false });
    const names = (await metrics.registry.getMetricsAsJSON()).map((m) => m.name);
    expect(names.length).toBeGreaterThanOrEqual(9);
    for (const name of names) expect(readme).toMatch(new RegExp(`^\\|\\s*\`${name}\`\\s*\\|`, 'm'));
  });
});
