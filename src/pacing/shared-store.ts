import { readFileSync } from 'node:fs';
import type { Registry } from 'prom-client';
import type { Clock } from '../clock.js';
import type { Config } from '../config/config.js';
import { CredentialError } from '../credentials/credentials.js';
import type { Logger } from '../log/logger.js';
import { FallbackSlotStore } from './fallback-slot-store.js';
import { RedisSlotStore } from './redis-slot-store.js';
import type { ReserveLimits } from './reserve-script.js';
import { SharedBudgetMetrics } from './shared-metrics.js';
import type { SlotStore } from './types.js';

/** `rateLimit` of the validated configuration. */
export type RateLimitConfig = Config['rateLimit'];
/** `rateLimit.shared` of the validated configuration. */
export type SharedConfig = NonNullable<RateLimitConfig['shared']>;

/** Builds the local store a replica uses alone while Redis is unreachable. */
export type LocalStoreFactory = (limits: ReserveLimits) => SlotStore;

/** What `createSharedStore` needs besides the configuration. */
export interface SharedStoreDeps {
  clock: Clock;
  logger: Logger;
  /** The process's metrics registry; the shared-budget metrics are registered on it. */
  registry: Registry;
  /** E.g. `(limits) => new LocalSlotStore({ ...limits, clock })`. */
  localStoreFactory: LocalStoreFactory;
  /** Contents of `shared.passwordFile`; read from the file when omitted. */
  password?: string | undefined;
  commandTimeoutMs?: number | undefined;
  connectTimeoutMs?: number | undefined;
  probeIntervalMs?: number | undefined;
}

/**
 * The limits one replica applies alone while the shared budget is unreachable: `fallback` × the
 * configured ones. Counts are rounded down (the safe side) but never to 0 when the limit is on,
 * so a replica can always send: burst ≥ 1, window max ≥ 1. Limits that are off stay off.
 */
export function fallbackLimits(rateLimit: RateLimitConfig, fallback: number): ReserveLimits {
  const { perSecond, burst, window } = rateLimit;
  return {
    perSecond: perSecond * fallback,
    burst: Math.max(1, Math.floor(burst * fallback)),
    windowMax: window.max > 0 ? Math.max(1, Math.floor(window.max * fallback)) : 0,
    windowMs: window.length,
  };
}

/**
 * Reads a Redis password file (as Kubernetes mounts a secret); one trailing newline is dropped.
 * The error names the file, never its contents.
 */
export function readRedisPassword(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new CredentialError(`rateLimit.shared.passwordFile: cannot read ${file} (${code})`);
  }
  const password = text.replace(/\r?\n$/, '');
  if (password === '') throw new CredentialError(`rateLimit.shared.passwordFile: ${file} is empty`);
  return password;
}

/**
 * The `SlotStore` for `rateLimit.shared` (issue 7): the fleet's budget in Redis, falling back to
 * `localStoreFactory(fallbackLimits(...))` while Redis is unreachable. Connects at once, in the
 * background; throws only when the password file cannot be read.
 */
export function createSharedStore(
  rateLimit: RateLimitConfig,
  shared: SharedConfig,
  deps: SharedStoreDeps,
): FallbackSlotStore {
  const metrics = new SharedBudgetMetrics(deps.registry);
  const password =
    deps.password ??
    (shared.passwordFile !== undefined ? readRedisPassword(shared.passwordFile) : undefined);
  const redis = new RedisSlotStore({
    url: shared.redis,
    password,
    key: shared.key,
    perSecond: rateLimit.perSecond,
    burst: rateLimit.burst,
    windowMax: rateLimit.window.max,
    windowMs: rateLimit.window.length,
    metrics,
    logger: deps.logger,
    commandTimeoutMs: deps.commandTimeoutMs,
    connectTimeoutMs: deps.connectTimeoutMs,
  });
  return new FallbackSlotStore({
    shared: redis,
    local: deps.localStoreFactory(fallbackLimits(rateLimit, shared.fallback)),
    clock: deps.clock,
    logger: deps.logger,
    metrics,
    key: shared.key,
    probeIntervalMs: deps.probeIntervalMs,
  });
}
