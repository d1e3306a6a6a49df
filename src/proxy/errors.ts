import { M2mError } from '../errors.js';
import { http } from '../node-http.js';
import { RateLimitedError, ShuttingDownError } from '../pacing/errors.js';
import { TokenUnavailableError } from '../token/errors.js';

/**
 * The catalogue of responses m2m-proxy makes itself (docs/behaviour.md, "The proxy's own errors").
 * The handler, the `m2m_proxy_requests_rejected_total{reason}` label and the docs table all
 * come from this one table; a test checks docs/behaviour.md lists every code.
 */
export const PROXY_ERRORS = {
  bad_request: { status: 400, message: 'The request cannot be forwarded.' },
  method_not_allowed: {
    status: 405,
    message: 'TRACE and TRACK are refused: they would echo the access token.',
  },
  request_timeout: {
    status: 408,
    message: 'The request headers or body did not arrive in time.',
  },
  rate_limited: { status: 429, message: 'Too many requests are waiting for the upstream budget.' },
  upstream_unreachable: { status: 502, message: 'The upstream could not be reached.' },
  token_unavailable: { status: 503, message: 'No valid access token could be obtained in time.' },
  shutting_down: { status: 503, message: 'The proxy is shutting down.' },
  upstream_timeout: { status: 504, message: 'The upstream did not answer in time.' },
  internal_error: {
    status: 500,
    message: 'The proxy failed unexpectedly; its log has the details.',
  },
} as const satisfies Record<string, { status: number; message: string }>;

/** One of the catalogue's error codes. */
export type ProxyErrorCode = keyof typeof PROXY_ERRORS;

/** The header that marks a response as made by the proxy, not the upstream. */
export const ERROR_HEADER = 'x-m2m-proxy-error';

/** Whole seconds for `Retry-After` (RFC 9110 §10.2.3): rounded up, never below 1. */
function retryAfterSeconds(delayMs: number): number {
  return Math.max(1, Math.ceil(delayMs / 1000));
}

/**
 * A request that ends in one of the catalogue's error responses. `message` is a human sentence
 * that never contains a secret; `retryAfterMs` becomes a `Retry-After` header in whole seconds
 * (`retryAfterSeconds`, the one place it is rounded).
 */
export class ProxyError extends M2mError {
  readonly code: ProxyErrorCode;
  readonly status: number;
  readonly retryAfterSeconds: number | undefined;

  constructor(
    code: ProxyErrorCode,
    message?: string,
    options?: { retryAfterMs?: number; cause?: unknown },
  ) {
    super(message ?? PROXY_ERRORS[code].message, options);
    this.code = code;
    this.status = PROXY_ERRORS[code].status;
    this.retryAfterSeconds =
      options?.retryAfterMs === undefined ? undefined : retryAfterSeconds(options.retryAfterMs);
  }

  /** The JSON body of the response: the one place the catalogue's body is written. */
  body(): string {
    return JSON.stringify({ error: this.code, message: this.message });
  }

  /** The response's headers besides those of the connection (content type, code, Retry-After). */
  headers(body: string): Record<string, string | number> {
    const headers: Record<string, string | number> = {
      'content-type': 'application/json',
      [ERROR_HEADER]: this.code,
      'content-length': Buffer.byteLength(body),
    };
    if (this.retryAfterSeconds !== undefined) headers['retry-after'] = this.retryAfterSeconds;
    return headers;
  }

  /**
   * The whole response as raw HTTP/1.1 bytes, for a socket that never reached the request
   * handler (malformed HTTP, CONNECT, upgrades); the connection closes after it.
   */
  raw(): string {
    const body = this.body();
    const lines = [
      `HTTP/1.1 ${this.status} ${http.STATUS_CODES[this.status]}`,
      'connection: close',
    ];
    for (const [name, value] of Object.entries(this.headers(body))) lines.push(`${name}: ${value}`);
    return `${lines.join('\r\n')}\r\n\r\n${body}`;
  }
}

/**
 * The catalogue's response for an error thrown below the proxy (token, pacing) or by the proxy
 * itself; `undefined` for anything else (a failure that has no catalogue entry: the caller cuts
 * the connection instead). The only place token and pacing errors meet HTTP.
 */
export function toProxyError(err: unknown): ProxyError | undefined {
  if (err instanceof ProxyError) return err;
  if (err instanceof RateLimitedError) {
    return new ProxyError('rate_limited', undefined, { retryAfterMs: err.retryAfterMs });
  }
  if (err instanceof TokenUnavailableError) return new ProxyError('token_unavailable');
  if (err instanceof ShuttingDownError) return new ProxyError('shutting_down');
  return undefined;
}

/** The catalogue code of an error, for metrics and spans; `undefined` when it has none. */
export function proxyErrorCode(err: unknown): ProxyErrorCode | undefined {
  if (err instanceof M2mError) return toProxyError(err)?.code;
  return undefined;
}
