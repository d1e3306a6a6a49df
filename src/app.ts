import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { notReady } from './admin/readiness.js';
import { createAdminServer } from './admin/server.js';
import { type Clock, systemClock } from './clock.js';
import { type Config, displayUrl, type RouteConfig } from './config/config.js';
import type { EnvCredentials } from './config/environment.js';
import { tokenGroups } from './config/token-groups.js';
import type { TracingSettings } from './config/tracing.js';
import {
  type ClientCredentials,
  credentialFiles,
  readCredentials,
} from './credentials/credentials.js';
import { CredentialWatcher } from './credentials/watcher.js';
import { close, listen } from './listen.js';
import { AccessLog } from './log/access.js';
import { Audit } from './log/audit.js';
import type { Logger } from './log/logger.js';
import { Metrics } from './metrics/metrics.js';
import { Registry } from './metrics/prom-client.js';
import { createPacer } from './pacing/pacer.js';
import { sharedStores } from './pacing/shared-stores.js';
import type { Pacer, SlotStore } from './pacing/types.js';
import { Forwarder } from './proxy/forward.js';
import { ProxyHandler, type ReplayBudget } from './proxy/handler.js';
import { connectionLimit, createProxyServer } from './proxy/server.js';
import { TokenClient } from './token/client.js';
import { TokenManager } from './token/manager.js';
import type { RenewalObserver, RequestObserver } from './tracing/types.js';

/** A running proxy: every route's port and the admin port listening, the tokens kept fresh. */
export interface App {
  /** Every route's address, in configuration order. */
  readonly routes: ReadonlyArray<{ readonly name: string; readonly address: AddressInfo }>;
  /** SIGTERM's work: 503 for new requests, drain within `shutdown.timeout`, close everything. */
  shutdown(): Promise<void>;
}

export interface AppDeps {
  config: Config;
  /** The credentials of each token group (`TokenGroup.key`), read at start-up. */
  credentials: ReadonlyMap<string, ClientCredentials>;
  /** Contents of each `rateLimit.shared.passwordFile` by path, read at start-up with the credentials. */
  redisPasswords?: ReadonlyMap<string, string> | undefined;
  /** `M2M_PROXY_CLIENT_ID`/`_SECRET` as the configuration resolved them, for credential re-reads. */
  envCredentials?: EnvCredentials | undefined;
  /** Resolved by `resolveTracing`; absent: tracing off, and OpenTelemetry is never loaded. */
  tracing?: TracingSettings | undefined;
  logger: Logger;
  clock?: Clock;
  registry?: Registry;
  /** The package version, for `m2m_proxy_build_info`. */
  version?: string;
}

/** One route's running parts. */
interface RouteParts {
  readonly route: RouteConfig;
  readonly tokens: TokenManager;
  readonly pacer: Pacer;
  readonly forwarder: Forwarder;
  readonly handler: ProxyHandler;
  readonly server: Server;
}

/** Wires the modules together and starts listening at once (the first tokens are fetched meanwhile). */
export async function startApp(deps: AppDeps): Promise<App> {
  const { config, logger } = deps;
  const clock = deps.clock ?? systemClock;
  const metrics = new Metrics(deps.registry ?? new Registry(), {
    ...(deps.version ? { version: deps.version } : {}),
  });
  // Loaded only when an OTLP endpoint is configured: tracing off costs no memory and no CPU.
  const tracing = deps.tracing
    ? (await import('./tracing/otel.js')).startTracing(deps.tracing, { logger, clock })
    : undefined;

  const managers = new Map<string, TokenManager>();
  /** Each route's token renewal spans (its token group's), for the requests to link to. */
  const renewalSpans = new Map<string, RenewalObserver>();
  const watchers: CredentialWatcher[] = [];
  for (const group of tokenGroups(config)) {
    const names = group.routes.map((r) => r.name);
    const label = names.join(',');
    const groupLogger = logger.child({ route: label });
    const audit = new Audit(logger, label);
    const renewals = tracing?.renewals(label, group.token.url);
    let credentials = deps.credentials.get(group.key);
    if (!credentials) throw new Error(`no credentials for the token of ${names.join(', ')}`);
    const tokens = new TokenManager({
      config: group.token,
      source: new TokenClient({ config: group.token, clock }),
      credentials: () => credentials as ClientCredentials,
      clock,
      logger: groupLogger,
      metrics: metrics.forRoutes(names),
      audit,
      renewals,
    });
    watchers.push(
      new CredentialWatcher({
        files: credentialFiles(group.token.credentials),
        initial: credentials,
        read: () => readCredentials(group.token, deps.envCredentials),
        onChange: (next) => {
          credentials = next;
          tokens.credentialsChanged();
        },
        logger: groupLogger,
        clock,
        audit,
      }),
    );
    for (const name of names) {
      managers.set(name, tokens);
      if (renewals) renewalSpans.set(name, renewals);
    }
  }

  const stores = await sharedStores(config, {
    clock,
    logger,
    registry: metrics.registry,
    redisPasswords: deps.redisPasswords,
  });
  const parts: RouteParts[] = [];
  // One budget for the process: limits.connections is shared evenly by the routes' ports, and
  // kept bodies of every route draw from one limits.replayBytes.
  const maxConnections = Math.max(
    1,
    Math.floor(connectionLimit(config.limits.connections, logger) / config.routes.length),
  );
  const replay: ReplayBudget = { held: 0 };
  for (const route of config.routes) {
    const tokens = managers.get(route.name) as TokenManager;
    const store = route.rateLimit.shared ? stores.get(route.rateLimit.shared.key)?.() : undefined;
    const renewals = renewalSpans.get(route.name);
    const requests = renewals && tracing?.requests(route.name, route.upstream.url, renewals);
    parts.push(
      startRoute(route, { tokens, store, metrics, deps, clock, maxConnections, replay, requests }),
    );
  }
  const readiness = parts.map((p) => ({
    name: p.route.name,
    get shuttingDown() {
      return p.handler.shuttingDown;
    },
    hasToken: () => p.tokens.current() !== undefined,
    get tokenExpiresAt() {
      return p.tokens.expiresAt;
    },
  }));
  const admin = createAdminServer(metrics.registry, () => notReady(readiness));

  // A file without routes names its keys as before (`listen.port`); a route's start `routes[i]`.
  const single = config.token !== undefined;
  const bound = await Promise.allSettled([
    ...parts.map((p, i) =>
      listen(
        p.server,
        p.route.listen.host,
        p.route.listen.port,
        single ? 'listen' : `routes[${i}].listen`,
      ),
    ),
    listen(admin, config.admin.host, config.admin.port, 'admin'),
  ]);
  const failed = bound.find((b): b is PromiseRejectedResult => b.status === 'rejected');
  if (failed) {
    // Nothing stays listening: the process exits 2 and names the key to change.
    for (const watcher of watchers) watcher.close();
    await Promise.all([
      close(admin),
      ...parts.flatMap((p) => [close(p.server), p.pacer.close(), p.forwarder.close()]),
    ]);
    throw failed.reason;
  }
  for (const tokens of new Set(managers.values())) tokens.start();
  const adminAddress = admin.address() as AddressInfo;
  const routes = parts.map((p) => ({
    name: p.route.name,
    address: p.server.address() as AddressInfo,
  }));
  for (const { name, address } of routes) {
    logger.info({
      event: 'listening',
      route: name,
      proxy: `${address.address}:${address.port}`,
      admin: `${adminAddress.address}:${adminAddress.port}`,
      upstream: displayUrl(parts.find((p) => p.route.name === name)?.route.upstream.url ?? ''),
      accessLog: config.log.access,
      tracing: deps.tracing ? deps.tracing.url : 'off',
    });
  }

  let shutdown: Promise<void> | undefined;
  return {
    routes,
    shutdown() {
      shutdown ??= (async () => {
        const deadline = clock.now() + config.shutdown.timeout;
        const inFlight = parts.reduce((n, p) => n + p.handler.inFlight, 0);
        logger.info({ event: 'shutting_down', inFlight });
        // Every route stops taking requests at once; they drain together within one timeout.
        const left = await Promise.all(parts.map((p) => p.handler.drain(config.shutdown.timeout)));
        const abandoned = left.reduce((n, l) => n + l, 0);
        if (abandoned > 0) logger.warn({ event: 'shutdown_timeout', abandoned });
        for (const watcher of watchers) watcher.close();
        for (const tokens of new Set(managers.values())) tokens.stop();
        for (const p of parts) p.server.closeAllConnections();
        await Promise.all([
          close(admin),
          ...parts.flatMap((p) => [close(p.server), p.pacer.close(), p.forwarder.close()]),
        ]);
        // The last spans (those of the drained requests) go out within what is left of the budget.
        await tracing?.shutdown(Math.max(0, deadline - clock.now()));
        logger.info({ event: 'stopped' });
      })();
      return shutdown;
    },
  };
}

/** What one route's parts are built from. */
interface RouteDeps {
  tokens: TokenManager;
  store: SlotStore | undefined;
  metrics: Metrics;
  deps: AppDeps;
  clock: Clock;
  /** This route's share of `limits.connections`. */
  maxConnections: number;
  replay: ReplayBudget;
  /** The route's request spans, when tracing is on. */
  requests: RequestObserver | undefined;
}

/** Builds one route's pacer, forwarder, handler and (not yet listening) server. */
function startRoute(route: RouteConfig, parts: RouteDeps): RouteParts {
  const { tokens, store, metrics, deps, clock } = parts;
  const { limits } = deps.config;
  const logger = deps.logger.child({ route: route.name });
  const routeMetrics = metrics.forRoutes([route.name]);
  const pacer: Pacer = createPacer(route.rateLimit, {
    clock,
    metrics: routeMetrics,
    ...(store ? { store } : {}),
  });
  const forwarder = new Forwarder({ config: route.upstream, clock });
  // The access log wraps the spans when both are on: the handler sees one observer.
  const observer = deps.config.log.access
    ? new AccessLog(deps.logger, route.name, parts.requests)
    : parts.requests;
  const handler = new ProxyHandler({
    config: route,
    observer,
    limits,
    replay: parts.replay,
    tokens,
    pacer,
    forwarder,
    metrics: routeMetrics,
    logger,
    clock,
  });

  const server = createProxyServer({
    route,
    limits,
    handler,
    metrics: routeMetrics,
    maxConnections: parts.maxConnections,
  });
  return { route, tokens, pacer, forwarder, handler, server };
}
