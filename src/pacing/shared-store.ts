import type { Registry } from 'prom-client';
import type { Clock } from '../clock.js';
import type { RouteConfig } from '../config/config.js';
import { readRedisPassword } from '../credentials/credentials.js';
import type { Audit } from '../log/audit.js';
import type { Logger } from '../log/logger.js';
import { SharedBudgetMetrics } from '../metrics/metrics.js';
import { FallbackSlotStore } from './fallback-slot-store.js';
import { slotLimits, WIRE_MARGIN } from './local-slot-store.js';
import { LATE_TOLERANCE_MS, RedisSlotStore } from './redis-slot-store.js';
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
 * The limits of the fleet's schedule in Redis: `slotLimits`, with starts further apart by what
 * `LATE_TOLERANCE_MS` needs beyond `WIRE_MARGIN`, and the window lengthened by the tolerance, so
 * a start that late stays within both limits on the wire.
 */
export function sharedLimits(rateLimit: RateLimitConfig): SlotLimits {
  const limits = slotLimits(rateLimit);
  // `WIRE_MARGIN` covers 10 ms of lateness per second; the rest of the tolerance is kept here.
  const extraMs = Math.max(0, LATE_TOLERANCE_MS - WIRE_MARGIN * 1000);
  return {
    ...limits,
    perSecond: (limits.perSecond * 1000) / (1000 + extraMs),
    windowMs: limits.windowMs + LATE_TOLERANCE_MS,
  };
}

/**
 * The `SlotStore` for `rateLimit.shared`: the fleet's budget in Redis, falling back to
 * `localStoreFactory(slotLimits(rateLimit, share))` (this replica's share of the limits, never
 * rounded to "off"; see `FallbackSlotStore`) while Redis is unreachable. Registers the shared-budget metrics on
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
    ...sharedLimits(rateLimit),
    metrics,
    logger: deps.logger,
    commandTimeoutMs: deps.commandTimeoutMs,
    connectTimeoutMs: deps.connectTimeoutMs,
    clock: deps.clock,
  });
  return new FallbackSlotStore({
    shared: redis,
    localFor: (share) => deps.localStoreFactory(slotLimits(rateLimit, share)),
    fallback: shared.fallback,
    clock: deps.clock,
    logger: deps.logger,
    metrics,
    key: shared.key,
    probeIntervalMs: deps.probeIntervalMs,
    audit: deps.audit,
  });
}
