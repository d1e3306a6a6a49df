/** A prom-client metric's scrape hook: `collect`, called by `get()` before every read. */
interface Collectable {
  collect?: (() => void) | undefined;
}

/**
 * Installs `hook` as the scrape-time `collect` of a route's gauge (`RouteGauge`, made by the
 * `Metrics` class) and returns its removal. The gauge family's own prom-client `collect` calls
 * every route's hook before each read, so the hook is owned by the module that knows the value.
 */
export function onCollect(metric: object, hook: () => void): () => void {
  const target = metric as Collectable;
  target.collect = hook;
  return () => {
    if (target.collect === hook) target.collect = undefined;
  };
}
