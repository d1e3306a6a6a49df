import type { Registry } from 'prom-client';
import type { Clock } from '../clock.js';
import type { Config, RouteConfig } from '../config/config.js';
import { Audit } from '../log/audit.js';
import type { Logger } from '../log/logger.js';
import { LocalSlotStore } from './local-slot-store.js';
import type { SlotStore } from './types.js';

/** What the fleet's stores are built with. */
export interface SharedStoresDeps {
  clock: Clock;
  logger: Logger;
  /** The process's metrics registry (the shared-budget metrics are registered on it). */
  registry: Registry;
  /** Contents of each `rateLimit.shared.passwordFile` by path, read at start-up. */
  redisPasswords?: ReadonlyMap<string, string> | undefined;
}

/**
 * One shared-budget store per `rateLimit.shared.key`, whatever the number of routes using it:
 * one Redis connection, and while Redis is unreachable the process paces those routes together
 * at its one fallback share (a store per route would give the process one share per route).
 * Each route gets its own handle from the factory; the store closes when the last one does.
 * Everything else goes through to the store: each route's pacer names its own grant when it
 * checks or corrects a start (`Reservation.grant`), so one route's late start never forfeits
 * or moves another route's slot.
 */
export async function sharedStores(
  config: Config,
  deps: SharedStoresDeps,
): Promise<Map<string, () => SlotStore>> {
  const { clock } = deps;
  const byKey = new Map<string, RouteConfig[]>();
  for (const route of config.routes) {
    const key = route.rateLimit.shared?.key;
    if (key !== undefined) byKey.set(key, [...(byKey.get(key) ?? []), route]);
  }
  const stores = new Map<string, () => SlotStore>();
  if (byKey.size === 0) return stores;
  // Loaded only for a fleet: the Redis client alone adds ~23 MB to the sidecar's resident memory.
  const { createSharedStore } = await import('./shared-store.js');
  for (const [key, routes] of byKey) {
    const [first] = routes as [RouteConfig];
    const shared = first.rateLimit.shared as NonNullable<RouteConfig['rateLimit']['shared']>;
    const names = routes.map((r) => r.name);
    // The configuration guarantees that these routes agree on the budget (perSecond, window, shared).
    const store = createSharedStore(first.rateLimit, shared, {
      clock,
      logger: deps.logger.child({ route: names.join(',') }),
      registry: deps.registry,
      routes: names,
      password: shared.passwordFile ? deps.redisPasswords?.get(shared.passwordFile) : undefined,
      localStoreFactory: (limits) => new LocalSlotStore({ ...limits, clock }),
      audit: new Audit(deps.logger, names.join(',')),
    });
    stores.set(key, routes.length === 1 ? () => store : sharing(store, routes.length));
  }
  return stores;
}

/**
 * Handles on `store` for `users` pacers: each forwards every call (the cancel signal, the
 * grant-checks, the live window gauge), and `close` closes the store once all have closed.
 */
export function sharing(store: SlotStore, users: number): () => SlotStore {
  let open = users;
  return () => {
    let closed = false;
    const handle: SlotStore = {
      reserve: (maxDelayMs, notBeforeMs, signal) => store.reserve(maxDelayMs, notBeforeMs, signal),
      close: () => {
        // A handle closed twice must not close the store under the other routes.
        if (closed) return Promise.resolve();
        closed = true;
        return --open === 0 ? store.close() : Promise.resolve();
      },
    };
    // Only what the store has (the pacer reads the window gauge live when the store can answer).
    const { mayStart, onWireLate, windowRemaining } = store;
    if (mayStart) handle.mayStart = mayStart.bind(store);
    if (onWireLate) handle.onWireLate = onWireLate.bind(store);
    if (windowRemaining) handle.windowRemaining = windowRemaining.bind(store);
    return handle;
  };
}
