/**
 * The seams between the proxy and its observers (traces, access log). Only types live here, so
 * that the handler and the token manager can hold an observer without loading OpenTelemetry:
 * the SDK is imported by `src/tracing/otel.ts`, and only when tracing is configured.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Why a token request was made (the `m2m_proxy.renewal.cause` span attribute). */
export type RenewalCause = 'initial' | 'scheduled' | 'upstream_rejected' | 'credentials_changed';

/** One token request, observed from start to end. */
export interface RenewalObservation {
  succeeded(): void;
  /** `reason` is the failure class of `m2m_proxy_token_refresh_failures_total`. */
  failed(reason: string, status: number | undefined): void;
}

/** Told about every token request (`TokenManager`). */
export interface RenewalObserver {
  renewalStarted(cause: RenewalCause): RenewalObservation;
}

/** Bytes of one request's body and its response's body, counted while they stream. */
export interface TransferStats {
  /** Request body bytes received from the client and forwarded. */
  bytesIn: number;
  /** Response body bytes sent to the client. */
  bytesOut: number;
}

/**
 * Follows one request through the handler, for its span tree and its access log line. Calls
 * come in this order: `begin` → (`queueStarted` → [`tokenWaitStarted` → `tokenWaitEnded`] →
 * `queueEnded`)? → (`attemptStarted` → `attemptEnded`)* with a token wait before a replay; the
 * request's end is seen by the observer itself (the response's `close`).
 */
export interface RequestObservation {
  readonly stats: TransferStats;
  /** The trace this request belongs to (32 hex digits), when tracing is on. */
  readonly traceId: string | undefined;
  /**
   * The headers that go upstream (flat name/value list ending in the `authorization` slot), once:
   * tracing takes the client's `traceparent`/`tracestate` out and keeps a slot for its own.
   */
  headers(headers: string[]): void;
  queueStarted(): void;
  queueEnded(error?: unknown): void;
  tokenWaitStarted(): void;
  tokenWaitEnded(error?: unknown): void;
  /** An attempt is about to be sent with `headers` (tracing sets its `traceparent` there). */
  attemptStarted(headers: string[]): void;
  /** The attempt's response (headers) came with `status`, or it failed with `error`. */
  attemptEnded(status: number | undefined, error?: unknown): void;
}

/** Makes one `RequestObservation` per request accepted on the proxy port. */
export interface RequestObserver {
  begin(req: IncomingMessage, res: ServerResponse): RequestObservation;
}
