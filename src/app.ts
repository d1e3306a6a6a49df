import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { Registry } from 'prom-client';
import { createAdminServer } from './admin/server.js';
import { type Clock, systemClock } from './clock.js';
import type { Config } from './config/config.js';
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
}

/** Wires the modules together and starts listening at once (the first token is fetched meanwhile). */
export async function startApp(deps: AppDeps): Promise<App> {
  const { config, logger, env } = deps;
  const clock = deps.clock ?? systemClock;
  const metrics = new Metrics(deps.registry ?? new Registry());
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

  const proxy = http.createServer(handler.handle);
  // Node's defaults (5 s keep-alive) would drop idle client connections sooner than clients expect.
  proxy.keepAliveTimeout = 65_000;
  // Requests that never reach the handler: malformed HTTP, CONNECT tunnels and protocol upgrades
  // (an API sidecar forwards requests, not sockets). Answered in the catalogue's format, then closed.
  const refuseOnSocket = (message: string) => (_: unknown, socket: Duplex) => {
    metrics.requestsRejected.inc({ reason: 'bad_request' });
    if (!socket.writable) return;
    const body = new ProxyError('bad_request', message).body();
    socket.end(
      `HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: application/json\r\n${ERROR_HEADER}: bad_request\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  };
  proxy.on('clientError', refuseOnSocket('The request is not valid HTTP.'));
  proxy.on(
    'connect',
    refuseOnSocket('CONNECT is not supported: the proxy forwards to one upstream only.'),
  );
  proxy.on('upgrade', refuseOnSocket('Protocol upgrades are not supported.'));
  const admin = createAdminServer(metrics.registry, () => {
    if (handler.shuttingDown) return 'shutting_down';
    if (!tokens.current()) return tokens.expiresAt === undefined ? 'no_token_yet' : 'token_expired';
    return undefined;
  });

  tokens.start();
  await Promise.all([
    listen(proxy, config.listen.host, config.listen.port),
    listen(admin, config.admin.host, config.admin.port),
  ]);
  const proxyAddress = proxy.address() as AddressInfo;
  const adminAddress = admin.address() as AddressInfo;
  logger.info({
    event: 'listening',
    proxy: `${proxyAddress.address}:${proxyAddress.port}`,
    admin: `${adminAddress.address}:${adminAddress.port}`,
    upstream: config.upstream.url,
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

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function close(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
  });
}
