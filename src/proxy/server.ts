import { readFileSync } from 'node:fs';
import type { Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Config, RouteConfig } from '../config/config.js';
import type { Logger } from '../log/logger.js';
import type { RouteMetrics } from '../metrics/metrics.js';
import { http } from '../node-http.js';
import { ProxyError } from './errors.js';
import type { ProxyHandler } from './handler.js';

/** What one route's proxy port is built from. */
export interface ProxyServerDeps {
  route: Pick<RouteConfig, 'rateLimit' | 'upstream'>;
  limits: Config['limits'];
  handler: Pick<ProxyHandler, 'handle'>;
  metrics: RouteMetrics;
  /** This port's share of `limits.connections`. */
  maxConnections: number;
}

/**
 * One route's proxy port (not yet listening): Node's HTTP server with the request handler, the
 * timeouts and connection limit of `limits`, and the requests that never reach the handler
 * (malformed HTTP, slow clients, CONNECT tunnels, protocol upgrades) refused in the catalogue's
 * format.
 */
export function createProxyServer(deps: ProxyServerDeps): Server {
  const { route, limits, handler, metrics } = deps;
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
  server.maxConnections = deps.maxConnections;
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
    socket.end(error.raw(), () => socket.destroy());
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
  return server;
}

/** Descriptors kept free for the admin port, the upstream pool, Redis, logs and watched files. */
const RESERVED_FDS = 64;

/**
 * `limits.connections`, lowered when the process's open-file limit could not hold that many
 * client connections beside what the proxy itself needs (a container with `ulimit -n 256`): past
 * the limit, `accept` fails and the admin port would stop answering too.
 */
export function connectionLimit(configured: number, logger: Logger): number {
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
