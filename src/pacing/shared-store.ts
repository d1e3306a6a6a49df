import type { Registry } from 'prom-client';
import type { Clock } from '../clock.js';
import type { RouteConfig } from '../config/config.js';
import { readRedisPassword } from '../credentials/credentials.js';
import type { Audit } from '../log/audit.js';
import type { Logger } from '../log/logger.js';
import { SharedBudgetMetrics } from '../metrics/metrics.js';
import { FallbackSlotStore } from './fallback-slot-store.js';
import { slotLimits } from './local-slot-store.js';
import { RedisSlotStore } from './redis-slot-store.js';
import type { SlotLimits, SlotStore } from './types.js';

/** `rateLimit` of the validated configuration. */
export type RateLimitConfig = RouteConfig['rateLimit'];
/** `rateLimit.shared` of the validated configuration. */
export type SharedConfig = NonNullable<RateLimitConfig['shared']>;

/** Builds the local store a replica uses alone while Redis is unreachable. */
export type LocalStoreFactory = (limits: SlotLimits) => SlotStore;

/** What `createSharedStore` needs besides the configuration. */
export interface SharedStoreDeps {
  clock: Clock;
  logger: Logger;
  /** The process's metrics registry; the shared-budget metrics are registered on it. */
  registry: Registry;
  /** The routes drawing from this budget: the `route` label of the shared-budget metrics. */
  routes?: readonly string[] | undefined;
  /** E.g. `(limits) => new LocalSlotStore({ ...limits, clock })`. */
  localStoreFactory: LocalStoreFactory;
  /** Contents of `shared.passwordFile`; read from the file when omitted. */
  password?: string | undefined;
  commandTimeoutMs?: number | undefined;
  connectTimeoutMs?: number | undefined;
  probeIntervalMs?: number | undefined;
  /** The audit trail (`shared_budget_lost` / `shared_budget_restored`). */
  audit?: Audit | undefined;
}

/**
 * The `SlotStore` for `rateLimit.shared` (docs/fleet.md): the fleet's budget in Redis, falling back to
 * `localStoreFactory(slotLimits(rateLimit, shared.fallback))` (`fallback` × the limits, never
 * rounded to "off") while Redis is unreachable. Registers the shared-budget metrics on
 * `deps.registry`. Connects at once, in the background; throws only when the password file
 * cannot be read.
 */
export function createSharedStore(
  rateLimit: RateLimitConfig,
  shared: SharedConfig,
  deps: SharedStoreDeps,
): FallbackSlotStore {
  const metrics = new SharedBudgetMetrics(deps.registry, deps.routes);
  const password =
    deps.password ??
    (shared.passwordFile !== undefined ? readRedisPassword(shared.passwordFile) : undefined);
  const redis = new RedisSlotStore({
    url: shared.redis,
    password,
    key: shared.key,
    ...slotLimits(rateLimit),
    metrics,
    logger: deps.logger,
    commandTimeoutMs: deps.commandTimeoutMs,
    connectTimeoutMs: deps.connectTimeoutMs,
  });
  return new FallbackSlotStore({
    shared: redis,
    local: deps.localStoreFactory(slotLimits(rateLimit, shared.fallback)),
    clock: deps.clock,
    logger: deps.logger,
    metrics,
    key: shared.key,
    probeIntervalMs: deps.probeIntervalMs,
    audit: deps.audit,
  });
}
