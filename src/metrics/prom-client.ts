/**
 * The parts of prom-client the proxy uses, loaded from their own modules. prom-client's main
 * entry also loads its Pushgateway (with `node:https` and `node:zlib`), its cluster aggregator
 * (`node:cluster`) and its Summary, and its default CPU metric loads `@opentelemetry/api` for
 * exemplars: resident memory a sidecar would keep for its whole life and never use. The
 * prom-client version is pinned exactly in package.json; these paths are part of that version.
 */
import { createRequire } from 'node:module';
import type * as Prom from 'prom-client';

const load = createRequire(import.meta.url);

export const Registry = load('prom-client/lib/registry') as typeof Prom.Registry;
export type Registry = Prom.Registry;
export const Counter = load('prom-client/lib/counter') as typeof Prom.Counter;
export type Counter<T extends string> = Prom.Counter<T>;
export const Gauge = load('prom-client/lib/gauge') as typeof Prom.Gauge;
export type Gauge<T extends string> = Prom.Gauge<T>;
export const Histogram = load('prom-client/lib/histogram') as typeof Prom.Histogram;
export type Histogram<T extends string> = Prom.Histogram<T>;

/** prom-client's default metrics but its CPU counters, by their module names. */
const DEFAULT_METRICS = [
  'processStartTime',
  'osMemoryHeap',
  'processOpenFileDescriptors',
  'processMaxFileDescriptors',
  'eventLoopLag',
  'processResources',
  'processHandles',
  'processRequests',
  'heapSizeAndUsed',
  'heapSpacesSizeAndUsed',
  'version',
  'gc',
] as const;

/**
 * What prom-client's `collectDefaultMetrics` registers (`process_*`, `nodejs_*`), with the same
 * names, help texts and values. The CPU counters are built here: prom-client's own module loads
 * `@opentelemetry/api` at start for exemplars the proxy does not use.
 */
export function collectDefaultMetrics(registry: Registry): void {
  const registers = [registry];
  let last = process.cpuUsage();
  // Created first, as prom-client does: its `collect` sets all three from one reading before the
  // registry reads the other two.
  new Counter({
    name: 'process_cpu_user_seconds_total',
    help: 'Total user CPU time spent in seconds.',
    registers,
    collect() {
      const now = process.cpuUsage();
      const user = (now.user - last.user) / 1e6;
      const system = (now.system - last.system) / 1e6;
      last = now;
      this.inc(user);
      cpuSystem.inc(system);
      cpuTotal.inc(user + system);
    },
  });
  const cpuSystem = new Counter({
    name: 'process_cpu_system_seconds_total',
    help: 'Total system CPU time spent in seconds.',
    registers,
  });
  const cpuTotal = new Counter({
    name: 'process_cpu_seconds_total',
    help: 'Total user and system CPU time spent in seconds.',
    registers,
  });
  for (const name of DEFAULT_METRICS) {
    const register = load(`prom-client/lib/metrics/${name}`) as (r: Registry, c: object) => void;
    register(registry, {});
  }
}
