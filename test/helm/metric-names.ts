/**
 * The metric names the Helm chart's alerts (PrometheusRule) and Grafana dashboard may use: the
 * fixed names (docs/metrics.md) plus those the proxy adds (window budget, the fleet's shared
 * budget). Histograms are listed by their base name; `_bucket`, `_sum` and `_count` are
 * derived from it.
 *
 * The chart tests check that every `m2m_proxy_*` identifier in the rules and the dashboard is in
 * this list. A separate test (the lead's) cross-checks this list against the names the running
 * proxy exports on /metrics, so that the chart can never reference a metric that does not exist.
 */
export const CHART_METRIC_NAMES = [
  'm2m_proxy_token_refreshes_total',
  'm2m_proxy_token_refresh_failures_total',
  'm2m_proxy_token_expiry_timestamp_seconds',
  'm2m_proxy_upstream_responses_total',
  'm2m_proxy_upstream_request_duration_seconds',
  'm2m_proxy_requests_rejected_total',
  'm2m_proxy_queue_length',
  'm2m_proxy_queue_wait_seconds',
  'm2m_proxy_window_remaining',
  'm2m_proxy_shared_budget_up',
  'm2m_proxy_shared_budget_errors_total',
] as const;

/** The histograms among them (exported as `_bucket`, `_sum`, `_count` series). */
export const CHART_HISTOGRAMS = [
  'm2m_proxy_upstream_request_duration_seconds',
  'm2m_proxy_queue_wait_seconds',
] as const;

/**
 * Every `m2m_proxy_*` metric name referenced in a PromQL text, with the histogram series suffixes
 * stripped (`..._seconds_bucket` → `..._seconds`).
 */
export function referencedMetricNames(promql: string): Set<string> {
  const names = new Set<string>();
  for (const [name] of promql.matchAll(/\bm2m_proxy_[a-z0-9_]+/g)) {
    const base = name.replace(/_(bucket|sum|count)$/, '');
    names.add((CHART_HISTOGRAMS as readonly string[]).includes(base) ? base : name);
  }
  return names;
}
