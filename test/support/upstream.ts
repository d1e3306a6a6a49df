/**
 * A real upstream API for integration tests, the demo and benchmarks: a `node:http` server that
 * verifies every bearer token against the IdP's JWKS (RFC 6750), records what it received, and
 * can emulate the production WAF (too many requests from one address → 403).
 *
 * @example
 * ```ts
 * const api = await startUpstream({ issuer: idp.issuer, audience: idp.audience, basePath: '/api/v1' });
 * // ... proxy forwards to api.url (= http://127.0.0.1:<port>/api/v1) ...
 * expect(api.requests[0]?.headers.host).toBe(api.host);
 * await api.close();
 * ```
 */
import { createCipheriv, createHash } from 'node:crypto';
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { createRemoteJWKSet, type JWTPayload, jwtVerify } from 'jose';
import { listen } from './process.js';

/** How the upstream judged a request's bearer token. */
export type AuthResult = 'ok' | 'missing' | 'invalid' | 'revoked' | 'skipped';

/** Everything the upstream saw of one request. Fields after the body are filled in as it is handled. */
export interface UpstreamRequest {
  /** `Date.now()` at arrival. */
  time: number;
  /** `performance.now()` at arrival (for spacing measurements). */
  at: number;
  method: string;
  /** Path and query exactly as on the request line. */
  url: string;
  /** Path without the query, as received (basePath included). */
  path: string;
  /** Query string without `?` ('' when none). */
  query: string;
  /** Node's merged, lower-cased headers (the Authorization header included). */
  headers: IncomingHttpHeaders;
  /** Header names and values as they came on the wire, in order. */
  rawHeaders: string[];
  remoteAddress: string;
  /** Bytes of request body received (valid once `done`). */
  bodyBytes: number;
  /** Hex sha256 of the request body, computed while streaming (valid once `done`). */
  bodySha256: string;
  auth: AuthResult;
  /** The bearer token as received (so a test can check it never reached a log). */
  token: string | undefined;
  /** Claims of a verified token. */
  claims:
    | { jti?: string; sub?: string; client_id?: string; scope?: string; exp?: number }
    | undefined;
  /** Status the upstream answered (0 until it has). */
  status: number;
  /** Why the upstream answered as it did, when not by a route: `waf`, `forced`, `hook`, `auth`. */
  reason: 'waf' | 'forced' | 'hook' | 'auth' | 'route';
  /** Resolves when the request is answered or its connection is gone. */
  done: Promise<void>;
}

/** A response the upstream gives to the next requests instead of routing them. */
export interface ForcedResponse {
  status: number;
  headers?: Record<string, string>;
  body?: string;
}

/**
 * A hook that sees each request after recording and the WAF, before auth. Return `true` when the
 * hook answered the request itself.
 */
export type UpstreamHook = (
  req: IncomingMessage,
  res: ServerResponse,
  record: UpstreamRequest,
) => boolean | Promise<boolean>;

/** Options of {@link startUpstream}. */
export interface UpstreamOptions {
  /** The IdP's issuer: tokens must carry it as `iss`. */
  issuer: string;
  /** Default `${issuer}/jwks`. */
  jwksUrl?: string;
  /** Expected `aud` of tokens. */
  audience: string;
  /** Prefix under which the routes live, e.g. `/api/v1`. Requests outside it get 404. Default ''. */
  basePath?: string;
  /** Default `127.0.0.1`. */
  host?: string;
  /** Default 0 (a free port). */
  port?: number;
  /**
   * WAF emulation: more than `max` requests from one client address within any sliding
   * `windowMs` get 403 `{"error":"waf_blocked"}`. Every request counts, blocked ones too, as with
   * a rate-based WAF rule. The production API allows 2000 per 5 minutes per IP.
   */
  waf?: { max: number; windowMs: number };
  /**
   * The WAF's clock in ms (default `performance.now`): a test that is about the window's logic,
   * not the wire, moves it by hand so the outcome does not depend on how loaded the machine is.
   */
  wafClock?: () => number;
  /** When false, tokens are neither required nor checked (load tests of the proxy alone). Default true. */
  verifyTokens?: boolean;
  /** See {@link UpstreamHook}. Can be changed later with `setHook`. */
  hook?: UpstreamHook;
}

/** A running upstream. */
export interface Upstream {
  /** `http://127.0.0.1:<port>` + basePath: what the proxy's `upstream.url` should be. */
  readonly url: string;
  /** `http://127.0.0.1:<port>` without basePath. */
  readonly origin: string;
  /** `127.0.0.1:<port>`: the Host header a correct proxy sends. */
  readonly host: string;
  readonly port: number;
  /** Every request received since start or `reset()`, in arrival order. */
  readonly requests: readonly UpstreamRequest[];
  /** How many requests the WAF emulation has blocked since start or `reset()`. */
  readonly wafBlocked: number;
  /** Answers the next `count` requests (that pass the WAF) with this response. */
  forceNext(response: ForcedResponse, count?: number): void;
  /** Answers the next request with 401 `invalid_token`, as if the token had been revoked. */
  respond401Once(): void;
  /** Treats every token seen so far as revoked (401 `invalid_token`); new tokens are accepted. */
  revokeSeenTokens(): void;
  setHook(hook: UpstreamHook | null): void;
  /** Clears the records, WAF history, forced responses and revocations. */
  reset(): void;
  /** Stops listening and destroys every open connection at once. */
  close(): Promise<void>;
}

const DOWNLOAD_CHUNK = 64 * 1024;

/**
 * A deterministic pseudo-random byte stream: the AES-128-CTR keystream for a key derived from
 * `seed`, produced in 64 KiB chunks (fast, and never one big buffer).
 */
export function* pseudoRandomChunks(bytes: number, seed = 'm2m'): Generator<Buffer> {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(DOWNLOAD_CHUNK);
  let left = bytes;
  while (left > 0) {
    const n = Math.min(left, DOWNLOAD_CHUNK);
    yield cipher.update(n === DOWNLOAD_CHUNK ? zeros : zeros.subarray(0, n));
    left -= n;
  }
}

/** The hex sha256 of `GET /download?bytes=<bytes>&seed=<seed>`'s body. */
export function pseudoRandomSha256(bytes: number, seed = 'm2m'): string {
  const hash = createHash('sha256');
  for (const chunk of pseudoRandomChunks(bytes, seed)) hash.update(chunk);
  return hash.digest('hex');
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

/** Reads and hashes the whole body without keeping it. */
function drain(req: IncomingMessage, record: UpstreamRequest): Promise<void> {
  return new Promise((resolve) => {
    const hash = createHash('sha256');
    req.on('data', (chunk: Buffer) => {
      record.bodyBytes += chunk.length;
      hash.update(chunk);
    });
    req.on('end', () => {
      record.bodySha256 = hash.digest('hex');
      resolve();
    });
    // An aborted body: resolve anyway, the record keeps the bytes seen.
    req.on('close', () => resolve());
    req.on('error', () => resolve());
  });
}

/**
 * Starts the upstream API on a loopback port.
 *
 * Routes (under `basePath`): `GET /echo/*` → the request as JSON; `POST|PUT /upload` → `{bytes,
 * sha256}` of the body; `GET /download?bytes=N[&seed=S]` → N pseudo-random bytes with their sha256
 * in `X-Content-SHA256`; `/slow?ms=N` → waits N ms, then 200; `/status/:code[?retryAfter=V]` →
 * that status (with `Retry-After: V`); anything else → the echo.
 */
export async function startUpstream(options: UpstreamOptions): Promise<Upstream> {
  const basePath = (options.basePath ?? '').replace(/\/+$/, '');
  const verifyTokens = options.verifyTokens ?? true;
  const jwks = createRemoteJWKSet(new URL(options.jwksUrl ?? `${options.issuer}/jwks`));
  const requests: UpstreamRequest[] = [];
  const forced: ForcedResponse[] = [];
  const revoked = new Set<string>();
  const wafHits = new Map<string, number[]>();
  let wafBlocked = 0;
  let hook: UpstreamHook | null = options.hook ?? null;
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();

  /** Sliding-window count per address; true when this request goes over the limit. */
  function wafBlocks(address: string, now: number): boolean {
    const waf = options.waf;
    if (!waf) return false;
    let hits = wafHits.get(address);
    if (!hits) {
      hits = [];
      wafHits.set(address, hits);
    }
    let expired = 0;
    while (expired < hits.length && (hits[expired] ?? 0) <= now - waf.windowMs) expired += 1;
    if (expired > 0) hits.splice(0, expired);
    hits.push(now);
    return hits.length > waf.max;
  }

  async function authenticate(req: IncomingMessage, record: UpstreamRequest): Promise<string> {
    const header = req.headers.authorization;
    const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (match?.[1]) record.token = match[1];
    if (!verifyTokens) {
      record.auth = 'skipped';
      return '';
    }
    if (!match?.[1]) {
      record.auth = 'missing';
      return 'missing bearer token';
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(match[1], jwks, {
        issuer: options.issuer,
        audience: options.audience,
      }));
    } catch (err) {
      record.auth = 'invalid';
      return err instanceof Error ? err.message : 'invalid token';
    }
    const claim = (name: string) => (typeof payload[name] === 'string' ? payload[name] : undefined);
    const claims: NonNullable<UpstreamRequest['claims']> = {};
    for (const name of ['jti', 'sub', 'client_id', 'scope'] as const) {
      const value = claim(name);
      if (value !== undefined) claims[name] = value;
    }
    if (payload.exp !== undefined) claims.exp = payload.exp;
    record.claims = claims;
    if (claims.jti !== undefined && revoked.has(claims.jti)) {
      record.auth = 'revoked';
      return 'token revoked';
    }
    record.auth = 'ok';
    return '';
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const query = q === -1 ? '' : url.slice(q + 1);
    let settle!: () => void;
    const record: UpstreamRequest = {
      time: Date.now(),
      at: performance.now(),
      method: req.method ?? '',
      url,
      path,
      query,
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      remoteAddress: req.socket.remoteAddress ?? '',
      bodyBytes: 0,
      bodySha256: '',
      auth: 'skipped',
      token: undefined,
      claims: undefined,
      status: 0,
      reason: 'route',
      done: new Promise<void>((resolve) => {
        settle = resolve;
      }),
    };
    requests.push(record);
    res.on('finish', () => {
      record.status = res.statusCode;
      settle();
    });
    res.on('close', () => settle());

    if (wafBlocks(record.remoteAddress, options.wafClock?.() ?? record.at)) {
      wafBlocked += 1;
      record.reason = 'waf';
      await drain(req, record);
      sendJson(res, 403, { error: 'waf_blocked' });
      return;
    }
    if (hook && (await hook(req, res, record))) {
      record.reason = 'hook';
      return;
    }
    const next = forced.shift();
    if (next) {
      record.reason = 'forced';
      await drain(req, record);
      if (res.destroyed) return;
      res.writeHead(next.status, { 'content-type': 'application/json', ...next.headers });
      res.end(next.body ?? JSON.stringify({ status: next.status, forced: true }));
      return;
    }
    const authError = await authenticate(req, record);
    if (authError) {
      record.reason = 'auth';
      await drain(req, record);
      // RFC 6750 §3.1: no error code when the request carried no token at all.
      const challenge =
        record.auth === 'missing'
          ? 'Bearer realm="upstream"'
          : `Bearer realm="upstream", error="invalid_token", error_description="${authError.replace(/"/g, "'")}"`;
      sendJson(
        res,
        401,
        { error: record.auth === 'missing' ? 'missing_token' : 'invalid_token' },
        { 'www-authenticate': challenge },
      );
      return;
    }

    if (basePath && path !== basePath && !path.startsWith(`${basePath}/`)) {
      await drain(req, record);
      sendJson(res, 404, { error: 'not_found', path });
      return;
    }
    await route(req, res, record, path.slice(basePath.length) || '/');
  }

  async function route(
    req: IncomingMessage,
    res: ServerResponse,
    record: UpstreamRequest,
    route: string,
  ): Promise<void> {
    const params = new URLSearchParams(record.query);
    const method = record.method;

    if ((method === 'POST' || method === 'PUT') && route === '/upload') {
      await drain(req, record);
      sendJson(res, 200, { bytes: record.bodyBytes, sha256: record.bodySha256 });
      return;
    }
    if (method === 'GET' && route === '/download') {
      await drain(req, record);
      const bytes = Number(params.get('bytes') ?? '0');
      if (!Number.isSafeInteger(bytes) || bytes < 0) {
        sendJson(res, 400, { error: 'bad_bytes' });
        return;
      }
      const seed = params.get('seed') ?? 'm2m';
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': String(bytes),
        'x-content-sha256': pseudoRandomSha256(bytes, seed),
      });
      const chunks = pseudoRandomChunks(bytes, seed);
      const pump = () => {
        for (;;) {
          const next = chunks.next();
          if (next.done) {
            res.end();
            return;
          }
          if (!res.write(next.value)) {
            res.once('drain', pump);
            return;
          }
        }
      };
      res.on('close', () => res.off('drain', pump));
      pump();
      return;
    }
    const slow = route === '/slow' || route.startsWith('/slow/');
    if (slow) {
      await drain(req, record);
      const ms = Number(params.get('ms') ?? '1000');
      const timer = setTimeout(() => {
        timers.delete(timer);
        sendJson(res, 200, { waitedMs: ms });
      }, ms);
      timers.add(timer);
      res.on('close', () => {
        clearTimeout(timer);
        timers.delete(timer);
      });
      return;
    }
    const status = /^\/status\/(\d{3})$/.exec(route);
    if (status?.[1]) {
      await drain(req, record);
      const code = Number(status[1]);
      const retryAfter = params.get('retryAfter');
      const headers: Record<string, string> = retryAfter ? { 'retry-after': retryAfter } : {};
      if (code === 204 || code === 304) {
        res.writeHead(code, headers).end();
        return;
      }
      sendJson(res, code, { status: code }, headers);
      return;
    }
    // /echo/* and everything else.
    await drain(req, record);
    const headers: Record<string, string | string[] | undefined> = { ...req.headers };
    delete headers.authorization;
    sendJson(res, 200, {
      method,
      path: record.path,
      query: record.query,
      headers,
      bodyBytes: record.bodyBytes,
      bodySha256: record.bodySha256,
      sub: record.claims?.sub ?? null,
      client_id: record.claims?.client_id ?? null,
    });
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      sendJson(res, 500, { error: 'upstream_bug', message: String(err) });
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  const host = options.host ?? '127.0.0.1';
  const port = await listen(server, options.port ?? 0, host);
  const origin = `http://${host}:${port}`;

  return {
    url: `${origin}${basePath}`,
    origin,
    host: `${host}:${port}`,
    port,
    requests,
    get wafBlocked() {
      return wafBlocked;
    },
    forceNext(response, count = 1) {
      for (let i = 0; i < count; i += 1) forced.push(response);
    },
    respond401Once() {
      forced.push({
        status: 401,
        headers: {
          'www-authenticate':
            'Bearer realm="upstream", error="invalid_token", error_description="revoked"',
        },
        body: JSON.stringify({ error: 'invalid_token' }),
      });
    },
    revokeSeenTokens() {
      for (const r of requests) if (r.claims?.jti) revoked.add(r.claims.jti);
    },
    setHook(next) {
      hook = next;
    },
    reset() {
      requests.length = 0;
      forced.length = 0;
      revoked.clear();
      wafHits.clear();
      wafBlocked = 0;
    },
    close() {
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
    },
  };
}
