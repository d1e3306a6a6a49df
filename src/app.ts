import { readFileSync } from 'node:fs';
import type { Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { Registry } from 'prom-client';
import { createAdminServer } from './admin/server.js';
import { type Clock, systemClock } from './clock.js';
import { type Config, displayUrl } from './config/config.js';
import {
  type ClientCredentials,
  credentialFiles,
  readCredentials,
} from './credentials/credentials.js';
import { CredentialWatcher } from './credentials/watcher.js';
import { ERROR_HEADER, ProxyError } from './errors.js';
import type { Logger } from './log/logger.js';
import { Metrics } from './metrics/metrics.js';
import { http } from './node-http.js';
import { LocalSlotStore } from './pacing/local-slot-store.js';
import { createPacer } from './pacing/pacer.js';
import type { Pacer } from './pacing/types.js';
import { Forwarder } from './proxy/forward.js';
import { ProxyHandler } from './proxy/handler.js';
import { TokenClient } from './token/client.js';
import { TokenManager } from './token/manager.js';

/** A running proxy: both servers listening, the token being kept fresh. */
export interface App {
  readonly proxyAddress: AddressInfo;
  readonly adminAddress: AddressInfo;
  readonly metrics: Metrics;
  /** SIGTERM's work: 503 for new requests, drain within `shutdown.timeout`, close everything. */
  shutdown(): Promise<void>;
}

export interface AppDeps {
  config: Config;
  credentials: ClientCredentials;
  /** Contents of `rateLimit.shared.passwordFile`, read at start-up with the credentials. */
  redisPassword?: string | undefined;
  env: Readonly<Record<string, string | undefined>>;
  logger: Logger;
  clock?: Clock;
  registry?: Registry;
  /** The package version, for `m2m_proxy_build_info`. */
  version?: string;
}

/** Wires the modules together and starts listening at once (the first token is fetched meanwhile). */
export async function startApp(deps: AppDeps): Promise<App> {
  const { config, logger, env } = deps;
  const clock = deps.clock ?? systemClock;
  const metrics = new Metrics(deps.registry ?? new Registry(), {
    ...(deps.version ? { version: deps.version } : {}),
  });
  let credentials = deps.credentials;

  const tokens = new TokenManager({
    config: config.token,
    source: new TokenClient(config.token),
    credentials: () => credentials,
    clock,
    logger,
    metrics,
  });
  const watcher = new CredentialWatcher(
    credentialFiles(config.token.credentials),
    credentials,
    () => readCredentials(config.token, env),
    (next) => {
      credentials = next;
      tokens.credentialsChanged();
    },
    logger,
  );
  const shared = config.rateLimit.shared;
  // Loaded only for a fleet: the Redis client alone adds ~23 MB to the sidecar's resident memory.
  const store = shared
    ? (await import('./pacing/shared-store.js')).createSharedStore(config.rateLimit, shared, {
        clock,
        logger,
        registry: metrics.registry,
        password: deps.redisPassword,
        localStoreFactory: (limits) => new LocalSlotStore({ ...limits, clock }),
      })
    : undefined;
  const pacer: Pacer = createPacer(config.rateLimit, {
    clock,
    metrics,
    ...(store ? { store } : {}),
  });
  const forwarder = new Forwarder(config.upstream);
  const handler = new ProxyHandler({ config, tokens, pacer, forwarder, metrics, logger, clock });

  const { limits } = config;
  // Node checks both timeouts on this interval (default 30 s, too coarse for a 10 s bound).
  // A streamed body may take as long as the request may wait and run: never cut it sooner.
  const requestTimeout =
    limits.headersTimeout +
    limits.bodyTimeout +
    config.rateLimit.queue.timeout +
    config.upstream.timeout;
  /** The response each connection is answering, if any (a parse error must not contradict it). */
  const answering = new WeakMap<Duplex, ServerResponse>();
  const proxy = http.createServer(
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
  proxy.keepAliveTimeout = 65_000;
  proxy.maxConnections = connectionLimit(limits.connections, logger);
  /** Sockets already refused or closing (Node may report several parse errors for one socket). */
  const closing = new WeakSet<Duplex>();
  // Requests that never reach the handler: malformed HTTP, slow clients, CONNECT tunnels and
  // protocol upgrades (an API sidecar forwards requests, not sockets). Answered in the
  // catalogue's format, then the socket is destroyed once the answer is flushed: ending it alone
  // would leave the descriptor to a client that keeps its half of the connection open.
  const refuse = (socket: Duplex, error: ProxyError) => {
    if (closing.has(socket)) return;
    closing.add(socket);
    metrics.requestsRejected.inc({ reason: error.code });
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
  proxy.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
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
  proxy.on('connect', (_: unknown, socket: Duplex) =>
    refuse(
      socket,
      new ProxyError(
        'bad_request',
        'CONNECT is not supported: the proxy forwards to one upstream only.',
      ),
    ),
  );
  proxy.on('upgrade', (_: unknown, socket: Duplex) =>
    refuse(socket, new ProxyError('bad_request', 'Protocol upgrades are not supported.')),
  );
  const admin = createAdminServer(metrics.registry, () => {
    if (handler.shuttingDown) return 'shutting_down';
    if (!tokens.current()) return tokens.expiresAt === undefined ? 'no_token_yet' : 'token_expired';
    return undefined;
  });

  const bound = await Promise.allSettled([
    listen(proxy, config.listen.host, config.listen.port, 'listen'),
    listen(admin, config.admin.host, config.admin.port, 'admin'),
  ]);
  const failed = bound.find((b): b is PromiseRejectedResult => b.status === 'rejected');
  if (failed) {
    // Nothing stays listening: the process exits 2 and names the key to change.
    watcher.close();
    tokens.stop();
    await Promise.all([close(proxy), close(admin), pacer.close(), forwarder.close()]);
    throw failed.reason;
  }
  tokens.start();
  const proxyAddress = proxy.address() as AddressInfo;
  const adminAddress = admin.address() as AddressInfo;
  logger.info({
    event: 'listening',
    proxy: `${proxyAddress.address}:${proxyAddress.port}`,
    admin: `${adminAddress.address}:${adminAddress.port}`,
    upstream: displayUrl(config.upstream.url),
  });

  let shutdown: Promise<void> | undefined;
  return {
    proxyAddress,
    adminAddress,
    metrics,
    shutdown() {
      shutdown ??= (async () => {
        logger.info({ event: 'shutting_down', inFlight: handler.inFlight });
        const left = await handler.drain(config.shutdown.timeout);
        if (left > 0) logger.warn({ event: 'shutdown_timeout', abandoned: left });
        watcher.close();
        tokens.stop();
        proxy.closeAllConnections();
        await Promise.all([close(proxy), close(admin), pacer.close(), forwarder.close()]);
        logger.info({ event: 'stopped' });
      })();
      return shutdown;
    },
  };
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
