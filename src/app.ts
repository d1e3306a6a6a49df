import { readFileSync } from 'node:fs';
import type { Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { Registry } from 'prom-client';
import { createAdminServer, type ReadinessReason } from './admin/server.js';
import { type Clock, systemClock } from './clock.js';
import { type Config, displayUrl, type RouteConfig } from './config/config.js';
import type { TracingSettings } from './config/tracing.js';
import {
  type ClientCredentials,
  credentialFiles,
  readCredentials,
} from './credentials/credentials.js';
import { CredentialWatcher, POLL_MS } from './credentials/watcher.js';
import { ERROR_HEADER, ProxyError } from './errors.js';
import { AccessLog } from './log/access.js';
import { Audit } from './log/audit.js';
import type { Logger } from './log/logger.js';
import { Metrics } from './metrics/metrics.js';
import { http } from './node-http.js';
import { LocalSlotStore } from './pacing/local-slot-store.js';
import { createPacer } from './pacing/pacer.js';
import type { Pacer, SlotStore } from './pacing/types.js';
import { Forwarder } from './proxy/forward.js';
import { ProxyHandler, type ReplayBudget } from './proxy/handler.js';
import { TokenClient } from './token/client.js';
import { TokenManager } from './token/manager.js';
import type { RenewalObserver, RequestObserver } from './tracing/types.js';

/** A running proxy: every route's port and the admin port listening, the tokens kept fresh. */
export interface App {
  /** The first route's address (the only one of a file without `routes`). */
  readonly proxyAddress: AddressInfo;
  /** Every route's address, in configuration order. */
  readonly routes: ReadonlyArray<{ readonly name: string; readonly address: AddressInfo }>;
  readonly adminAddress: AddressInfo;
  readonly metrics: Metrics;
  /** SIGTERM's work: 503 for new requests, drain within `shutdown.timeout`, close everything. */
  shutdown(): Promise<void>;
}

/** Routes whose token blocks are equal: they share one `TokenManager`, so one token request. */
export interface TokenGroup {
  /** The token block, as every route of the group has it. */
  readonly token: RouteConfig['token'];
  /** Identifies the group in `AppDeps.credentials`. */
  readonly key: string;
  readonly routes: readonly RouteConfig[];
}

/**
 * Groups the routes by token block. Equal means equal after defaults, key by key (endpoint,
 * method, credential files, scope, audience, resource, params and the renewal settings): two
 * blocks that differ in anything get separate tokens, however similar.
 */
export function tokenGroups(config: Config): TokenGroup[] {
  const groups = new Map<
    string,
    { token: RouteConfig['token']; key: string; routes: RouteConfig[] }
  >();
  for (const route of config.routes) {
    const key = JSON.stringify(route.token);
    const group = groups.get(key);
    if (group) group.routes.push(route);
    else groups.set(key, { token: route.token, key, routes: [route] });
  }
  return [...groups.values()];
}

export interface AppDeps {
  config: Config;
  /** The credentials of each token group (`TokenGroup.key`), read at start-up. */
  credentials: ReadonlyMap<string, ClientCredentials>;
  /** Contents of each `rateLimit.shared.passwordFile` by path, read at start-up with the credentials. */
  redisPasswords?: ReadonlyMap<string, string> | undefined;
  env: Readonly<Record<string, string | undefined>>;
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
  const { config, logger, env } = deps;
  const clock = deps.clock ?? systemClock;
  const metrics = new Metrics(deps.registry ?? new Registry(), {
    ...(deps.version ? { version: deps.version } : {}),
  });
  // Loaded only when an OTLP endpoint is configured: tracing off costs no memory and no CPU.
  const tracing = deps.tracing
    ? (await import('./tracing/otel.js')).startTracing(deps.tracing, { logger })
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
      source: new TokenClient(group.token),
      credentials: () => credentials as ClientCredentials,
      clock,
      logger: groupLogger,
      metrics: metrics.forRoutes(names),
      audit,
      renewals,
    });
    watchers.push(
      new CredentialWatcher(
        credentialFiles(group.token.credentials),
        credentials,
        () => readCredentials(group.token, env),
        (next) => {
          credentials = next;
          tokens.credentialsChanged();
        },
        groupLogger,
        POLL_MS,
        audit,
      ),
    );
    for (const name of names) {
      managers.set(name, tokens);
      if (renewals) renewalSpans.set(name, renewals);
    }
  }

  const stores = await sharedStores(config, metrics, deps, clock);
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
  const admin = createAdminServer(metrics.registry, () => notReady(parts));

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
    proxyAddress: (routes[0] as (typeof routes)[number]).address,
    routes,
    adminAddress,
    metrics,
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

/**
 * Why the proxy is not ready, or `undefined` when every route holds a valid token: the whole
 * sidecar is one pod's readiness, and an application calling a route without a token would get
 * 503s. One route's reason is a string as before; several are named route by route.
 */
function notReady(parts: readonly RouteParts[]): ReadinessReason | undefined {
  if (parts.some((p) => p.handler.shuttingDown)) return 'shutting_down';
  const routes: Record<string, string> = {};
  for (const { route, tokens } of parts) {
    if (tokens.current()) continue;
    routes[route.name] = tokens.expiresAt === undefined ? 'no_token_yet' : 'token_expired';
  }
  const names = Object.keys(routes);
  if (names.length === 0) return undefined;
  return {
    reason: names.length === 1 ? (routes[names[0] as string] as string) : 'routes_not_ready',
    routes,
  };
}

/**
 * One shared-budget store per `rateLimit.shared.key`, whatever the number of routes using it:
 * one Redis connection, and while Redis is unreachable the process paces those routes together
 * at its one fallback share (a store per route would give the process one share per route).
 * Each route gets its own handle from the factory; the store closes when the last one does.
 */
async function sharedStores(
  config: Config,
  metrics: Metrics,
  deps: AppDeps,
  clock: Clock,
): Promise<Map<string, () => SlotStore>> {
  const byKey = new Map<string, RouteConfig[]>();
  for (const route of config.routes) {
    const key = route.rateLimit.shared?.key;
    if (key !== undefined) byKey.set(key, [...(byKey.get(key) ?? []), route]);
  }
  const stores = new Map<string, () => SlotStore>();
  if (byKey.size === 0) return stores;
  // Loaded only for a fleet: the Redis client alone adds ~23 MB to the sidecar's resident memory.
  const { createSharedStore } = await import('./pacing/shared-store.js');
  for (const [key, routes] of byKey) {
    const [first] = routes as [RouteConfig];
    const shared = first.rateLimit.shared as NonNullable<RouteConfig['rateLimit']['shared']>;
    const names = routes.map((r) => r.name);
    // The configuration guarantees that these routes agree on the budget (perSecond, window, shared).
    const store = createSharedStore(first.rateLimit, shared, {
      clock,
      logger: deps.logger.child({ route: names.join(',') }),
      registry: metrics.registry,
      routes: names,
      password: shared.passwordFile ? deps.redisPasswords?.get(shared.passwordFile) : undefined,
      localStoreFactory: (limits) => new LocalSlotStore({ ...limits, clock }),
      audit: new Audit(deps.logger, names.join(',')),
    });
    let open = routes.length;
    stores.set(key, () =>
      routes.length === 1
        ? store
        : {
            reserve: (maxDelayMs, notBeforeMs) => store.reserve(maxDelayMs, notBeforeMs),
            close: () => (--open === 0 ? store.close() : Promise.resolve()),
          },
    );
  }
  return stores;
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
  const forwarder = new Forwarder(route.upstream);
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

  // Node checks both timeouts on this interval (default 30 s, too coarse for a 10 s bound).
  // A streamed body may take as long as the request may wait and run: never cut it sooner.
  const requestTimeout =
    limits.headersTimeout +
    limits.bodyTimeout +
    route.rateLimit.queue.timeout +
    route.upstream.timeout;
  /** The response each connection is answering, if any (a parse error must not contradict it). */
  const answering = new WeakMap<Duplex, ServerResponse>();
  const server = http.createServer(
    {
      headersTimeout: limits.headersTimeout,
      requestTimeout,
      connectionsCheckingInterval: Math.min(1000, limits.headersTimeout),
    },
    (req, res) => {
      answering.set(req.socket, res);
      handler.handle(req, res);
    },
  );
  // Node's defaults (5 s keep-alive) would drop idle client connections sooner than clients expect.
  server.keepAliveTimeout = 65_000;
  server.maxConnections = parts.maxConnections;
  /** Sockets already refused or closing (Node may report several parse errors for one socket). */
  const closing = new WeakSet<Duplex>();
  // Requests that never reach the handler: malformed HTTP, slow clients, CONNECT tunnels and
  // protocol upgrades (an API sidecar forwards requests, not sockets). Answered in the
  // catalogue's format, then the socket is destroyed once the answer is flushed: ending it alone
  // would leave the descriptor to a client that keeps its half of the connection open.
  const refuse = (socket: Duplex, error: ProxyError) => {
    if (closing.has(socket)) return;
    closing.add(socket);
    routeMetrics.requestsRejected.inc({ reason: error.code });
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const body = error.body();
    socket.end(
      `HTTP/1.1 ${error.status} ${http.STATUS_CODES[error.status]}\r\nconnection: close\r\ncontent-type: application/json\r\n${ERROR_HEADER}: ${error.code}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      () => socket.destroy(),
    );
  };
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    const res = answering.get(socket);
    if (res && !res.writableFinished) {
      // Bytes after a request that is being answered (pipelined garbage, a body cut by the
      // request timeout): the request keeps its true answer, then the connection closes.
      if (closing.has(socket)) return;
      closing.add(socket);
      socket.pause();
      res.shouldKeepAlive = false;
      res.once('close', () => socket.end(() => socket.destroy()));
      return;
    }
    if (err.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    refuse(
      socket,
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? new ProxyError('request_timeout')
        : new ProxyError('bad_request', 'The request is not valid HTTP.'),
    );
  });
  server.on('connect', (_: unknown, socket: Duplex) =>
    refuse(
      socket,
      new ProxyError(
        'bad_request',
        'CONNECT is not supported: the proxy forwards to one upstream only.',
      ),
    ),
  );
  server.on('upgrade', (_: unknown, socket: Duplex) =>
    refuse(socket, new ProxyError('bad_request', 'Protocol upgrades are not supported.')),
  );
  return { route, tokens, pacer, forwarder, handler, server };
}

/**
 * An address from the configuration cannot be listened on (in use, not local, not permitted): a
 * configuration error, whose message names the key to change.
 */
export class ListenError extends Error {
  constructor(key: string, host: string, port: number, code: string | undefined) {
    const why =
      code === 'EADDRINUSE'
        ? 'is already in use'
        : code === 'EADDRNOTAVAIL'
          ? 'is not an address of this host'
          : code === 'EACCES'
            ? 'may not be listened on by this user'
            : `cannot be listened on (${code ?? 'error'})`;
    super(`${key}.port / ${key}.host: ${host}:${port} ${why}`);
    this.name = 'ListenError';
  }
}

function listen(server: Server, host: string, port: number, key: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) =>
      reject(new ListenError(key, host, port, err.code));
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

function close(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close(() => resolve());
    server.closeIdleConnections();
  });
}

/** Descriptors kept free for the admin port, the upstream pool, Redis, logs and watched files. */
const RESERVED_FDS = 64;

/**
 * `limits.connections`, lowered when the process's open-file limit could not hold that many
 * client connections beside what the proxy itself needs (a container with `ulimit -n 256`): past
 * the limit, `accept` fails and the admin port would stop answering too.
 */
function connectionLimit(configured: number, logger: Logger): number {
  let soft: number | undefined;
  try {
    const line = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    soft = line ? Number(line[1]) : undefined;
  } catch {
    soft = undefined; // not Linux: the configured value stands
  }
  if (soft === undefined || soft - RESERVED_FDS >= configured) return configured;
  const lowered = Math.max(1, soft - RESERVED_FDS);
  logger.warn({
    event: 'connection_limit_lowered',
    configured,
    openFileLimit: soft,
    connections: lowered,
  });
  return lowered;
}
