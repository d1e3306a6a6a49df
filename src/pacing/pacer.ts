import type { Clock } from '../clock.js';
import type { RouteConfig } from '../config/config.js';
import type { RouteMetrics } from '../metrics/metrics.js';
import { LocalSlotStore, slotLimits } from './local-slot-store.js';
import { PassThroughPacer } from './pass-through-pacer.js';
import { QueuePacer } from './queue-pacer.js';
import type { Pacer, SlotStore } from './types.js';

/** What `createPacer` needs besides the configuration. */
export interface PacerDeps {
  clock: Clock;
  metrics: RouteMetrics;
  /** The fleet's shared store (docs/fleet.md); without it, a `LocalSlotStore` is made. */
  store?: SlotStore;
}

/**
 * The pacer for `rateLimit`: a `PassThroughPacer` when both limits are off, else a `QueuePacer`
 * on `deps.store` or a new `LocalSlotStore`.
 */
export function createPacer(rateLimit: RouteConfig['rateLimit'], deps: PacerDeps): Pacer {
  const { clock, metrics, store } = deps;
  const base = {
    clock,
    metrics,
    queueMax: rateLimit.queue.max,
    queueTimeoutMs: rateLimit.queue.timeout,
  };
  metrics.queueLength.set(0);
  if (rateLimit.perSecond === 0 && rateLimit.window.max === 0) {
    return new PassThroughPacer(store ? { ...base, store } : base);
  }
  // The whole window is free at start-up; without this the gauge would read 0 ("exhausted").
  if (rateLimit.window.max > 0) metrics.windowRemaining.set(rateLimit.window.max);
  return new QueuePacer({
    ...base,
    store: store ?? new LocalSlotStore({ ...slotLimits(rateLimit), clock }),
    awaitOnWire: true,
  });
}
