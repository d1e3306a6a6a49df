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
} as const satisfies Record<string, { status: number; message: string }>;

/** One of the contract's error codes. */
export type ProxyErrorCode = keyof typeof PROXY_ERRORS;

/** The header that marks a response as made by the proxy, not the upstream. */
export const ERROR_HEADER = 'x-m2m-proxy-error';

/**
 * A request that ends in one of the contract's error responses. `message` is a human sentence
 * that never contains a secret; `retryAfterSeconds` becomes a `Retry-After` header.
 */
export class ProxyError extends Error {
  readonly code: ProxyErrorCode;
  readonly status: number;
  readonly retryAfterSeconds: number | undefined;

  constructor(
    code: ProxyErrorCode,
    message?: string,
    options?: { retryAfterSeconds?: number; cause?: unknown },
  ) {
    super(
      message ?? PROXY_ERRORS[code].message,
      options?.cause === undefined ? undefined : { cause: options.cause },
    );
    this.name = 'ProxyError';
    this.code = code;
    this.status = PROXY_ERRORS[code].status;
    this.retryAfterSeconds = options?.retryAfterSeconds;
  }

  /** The JSON body of the response. */
  body(): string {
    return JSON.stringify({ error: this.code, message: this.message });
  }
}
