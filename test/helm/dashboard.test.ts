import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parser as promql } from '@prometheus-io/lezer-promql';
import { describe, expect, it } from 'vitest';
import { CHART_METRIC_NAMES, referencedMetricNames } from './metric-names.js';
import { CHART_DIR } from './renderer.js';

interface Panel {
  type: string;
  title: string;
  repeat?: string;
  targets?: { expr: string }[];
  panels?: Panel[];
}

const dashboard = JSON.parse(
  readFileSync(join(CHART_DIR, 'dashboards/m2m-proxy.json'), 'utf8'),
) as { uid: string; panels: Panel[]; templating: { list: { name: string }[] } };
const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const exprs = panels.flatMap((p) =>
  (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })),
);

/** Grafana's variables are not PromQL: give them values Prometheus would see. */
function asPromQL(expr: string): string {
  return expr.replaceAll('$__rate_interval', '1m').replaceAll('$__interval', '1m');
}

describe('Grafana dashboard (dashboards/m2m-proxy.json)', () => {
  it('has the panels an operator needs', () => {
    const titles = panels.map((p) => p.title);
    for (const t of [
      'Upstream responses by status',
      'Upstream latency',
      'Queue length',
      'Queue wait',
      'Window budget remaining',
      'Token expiry countdown',
      'Token renewals',
    ]) {
      expect(titles).toContain(t);
    }
    expect(dashboard.templating.list.map((v) => v.name)).toEqual([
      'datasource',
      'namespace',
      'pod',
      'route',
    ]);
  });

  it("has a route variable and shows every series per route (the metrics' `route` label)", () => {
    const route = dashboard.templating.list.find((v) => v.name === 'route') as unknown as {
      query: { query: string };
      includeAll: boolean;
      multi: boolean;
    };
    expect(route.query.query).toMatch(/^label_values\(m2m_proxy_[a-z_]+\{[^}]*\}, route\)$/);
    expect(route.includeAll && route.multi).toBe(true);
    const targets = panels.flatMap((p) =>
      (p.targets ?? []).map((t) => ({ panel: p.title, repeat: p.repeat, ...t })),
    ) as { panel: string; repeat?: string; expr: string; legendFormat?: string }[];
    expect(targets.length).toBeGreaterThan(0);
    for (const t of targets) {
      // Every selector of a proxy metric is filtered by the chosen routes ...
      const selectors = [...t.expr.matchAll(/\bm2m_proxy_[a-z0-9_]+(\{[^}]*\})?/g)];
      expect(selectors.length, t.panel).toBeGreaterThan(0);
      for (const [selector, matchers] of selectors) {
        expect(matchers ?? '', `${t.panel}: ${selector}`).toContain('route=~"$route"');
      }
      // ... and each series keeps its route: grouped by it and named by it in the legend.
      for (const [, labels] of t.expr.matchAll(/\bby \(([^)]*)\)/g)) {
        expect(labels?.split(/,\s*/), `${t.panel}: ${t.expr}`).toContain('route');
      }
      // A panel repeated per route names it in its title; the others in each legend.
      if (t.repeat === undefined) expect(t.legendFormat, t.panel).toContain('{{route}}');
      else expect(t.panel).toContain('$route');
    }
  });

  it('has one overview panel per route, repeated for each route chosen', () => {
    const repeated = panels.filter((p) => p.repeat !== undefined);
    expect(repeated.map((p) => [p.repeat, p.title])).toEqual([['route', '$route']]);
    const names = new Set(
      (repeated[0]?.targets ?? []).flatMap((t) => [...referencedMetricNames(t.expr)]),
    );
    expect([...names].sort()).toEqual([
      'm2m_proxy_queue_length',
      'm2m_proxy_requests_rejected_total',
      'm2m_proxy_token_expiry_timestamp_seconds',
      'm2m_proxy_upstream_responses_total',
    ]);
  });

  it('queries with valid PromQL', () => {
    expect(exprs.length).toBeGreaterThan(0);
    for (const { panel, expr } of exprs) {
      const errors: number[] = [];
      promql.parse(asPromQL(expr)).iterate({
        enter: (n) => {
          if (n.type.isError) errors.push(n.from);
        },
      });
      expect(errors, `${panel}: ${expr}`).toEqual([]);
    }
  });

  it('references only metric names the proxy exports', () => {
    const used = new Set<string>();
    for (const { expr } of exprs) for (const n of referencedMetricNames(expr)) used.add(n);
    for (const n of used) expect(CHART_METRIC_NAMES).toContain(n);
    // Every metric of the list is shown somewhere.
    for (const n of CHART_METRIC_NAMES) expect([...used], n).toContain(n);
  });

  it('lists histograms by their base name and strips the series suffixes', () => {
    expect([
      ...referencedMetricNames(
        'rate(m2m_proxy_queue_wait_seconds_bucket[5m]) + m2m_proxy_token_refreshes_total',
      ),
    ]).toEqual(['m2m_proxy_queue_wait_seconds', 'm2m_proxy_token_refreshes_total']);
  });
});
