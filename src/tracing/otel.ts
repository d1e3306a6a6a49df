/*
 * Longer than the project's ~300 lines on purpose: OpenTelemetry is loaded by one `import()` of
 * this file only, so every use of the SDK (the provider, the renewal and request tracers, the
 * W3C propagation helpers, the span clock) stays here; splitting it would spread the SDK's
 * imports over files that the lazy load must then keep track of.
 */
/**
 * OpenTelemetry traces (docs/tracing.md). This module is imported only when tracing is
 * configured (`app.ts` loads it with `import()`), so a proxy without an OTLP endpoint never loads
 * the SDK, the exporter or their dependencies.
 *
 * No context manager and no global provider: every span is started with its parent given
 * explicitly, so nothing here depends on async-hooks bookkeeping or touches other libraries.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  type Context,
  type HrTime,
  type Link,
  ROOT_CONTEXT,
  type Span,
  type SpanContext,
  SpanKind,
  SpanStatusCode,
  type TextMapGetter,
  trace,
} from '@opentelemetry/api';
import { setGlobalErrorHandler, W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BasicTracerProvider,
  BatchSpanProcessor,
  ParentBasedSampler,
  type Sampler,
  TraceIdRatioBasedSampler,
} from '@opentelemetry/sdk-trace-base';
import {
  ATTR_CLIENT_ADDRESS,
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_REQUEST_RESEND_COUNT,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_NETWORK_PROTOCOL_VERSION,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_SERVICE_NAME,
  ATTR_URL_FULL,
  ATTR_URL_PATH,
  ATTR_URL_SCHEME,
  ATTR_USER_AGENT_ORIGINAL,
} from '@opentelemetry/semantic-conventions';
import type { Clock, Timer } from '../clock.js';
import type { SamplerSettings, TracingSettings } from '../config/tracing.js';
import type { Logger } from '../log/logger.js';
import { ERROR_HEADER, proxyErrorCode } from '../proxy/errors.js';
import type {
  RenewalCause,
  RenewalObservation,
  RenewalObserver,
  RequestObservation,
  RequestObserver,
  TransferStats,
} from './types.js';

/** Attributes of our own, beside the HTTP semantic conventions. */
const ATTR_ROUTE = 'm2m_proxy.route';
const ATTR_RENEWAL_CAUSE = 'm2m_proxy.renewal.cause';
/** The semantic conventions' (still incubating) body sizes. */
const ATTR_REQUEST_BODY_SIZE = 'http.request.body.size';
const ATTR_RESPONSE_BODY_SIZE = 'http.response.body.size';

/** Export failures are logged at most this often: a collector that is down must not flood the log. */
const EXPORT_WARNING_INTERVAL_MS = 60_000;

/** What the tracer needs to describe the proxy's peers. */
export interface TracingDeps {
  logger: Logger;
  /** The export-warning throttle and the flush timeout at shutdown. */
  clock: Clock;
}

/** One route's (or one shared token's) peers, for its spans. */
interface PeerDeps {
  /** The route's name, or the names of the routes sharing a token (`m2m_proxy.route`). */
  route: string;
  /** `token.url`: the renewal spans' peer. */
  tokenUrl: string;
}

/** Tracing, started: the observer of requests and renewals, and the flush for shutdown. */
export interface Tracing {
  /** The renewal spans of one token (`route`: the routes that share it, comma-separated). */
  renewals(route: string, tokenUrl: string): RenewalObserver;
  /**
   * The request spans of one route; `renewals` is its token's, so that a request that waited for
   * a token links to the renewal that brought it. `upstreamUrl` gives the client spans' peer.
   */
  requests(route: string, upstreamUrl: string, renewals: RenewalObserver): RequestObserver;
  /** Exports the spans still buffered and stops; resolves within `timeoutMs` whatever happens. */
  shutdown(timeoutMs: number): Promise<void>;
}

/** Starts the provider, the batch processor and the OTLP/HTTP exporter for `settings`. */
export function startTracing(settings: TracingSettings, deps: TracingDeps): Tracing {
  let lastWarning = Number.NEGATIVE_INFINITY;
  // The SDK reports export failures here (its default handler writes to the silent diag logger).
  setGlobalErrorHandler((err) => {
    const now = deps.clock.now();
    if (now - lastWarning < EXPORT_WARNING_INTERVAL_MS) return;
    lastWarning = now;
    deps.logger.warn({
      event: 'tracing_export_failed',
      endpoint: settings.url,
      err,
    });
  });
  const exporter = new OTLPTraceExporter({ url: settings.url });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: settings.serviceName }),
    sampler: sampler(settings.sampler),
    // A user agent or path is data the client chose: bounded so a span stays small.
    spanLimits: { attributeValueLengthLimit: 1024 },
    spanProcessors: [
      // The OpenTelemetry defaults, written out so that they do not depend on OTEL_BSP_*.
      new BatchSpanProcessor(exporter, {
        maxQueueSize: 2048,
        maxExportBatchSize: 512,
        scheduledDelayMillis: 5000,
        exportTimeoutMillis: 30_000,
      }),
    ],
  });
  const tracer = provider.getTracer('m2m-proxy');
  return {
    renewals: (route, tokenUrl) => new RenewalTracer(tracer, { route, tokenUrl }),
    requests(route, upstreamUrl, renewals) {
      const upstream = new URL(upstreamUrl);
      const peer = {
        address: upstream.hostname,
        port: Number(upstream.port || (upstream.protocol === 'https:' ? 443 : 80)),
        base: `${upstream.origin}${upstream.pathname.replace(/\/+$/, '')}`,
      };
      // Only this module's own renewal tracer is ever passed back in.
      const tokenSpans = renewals as RenewalTracer;
      return { begin: (req, res) => new RequestTrace(tracer, tokenSpans, route, peer, req, res) };
    },
    async shutdown(timeoutMs) {
      let timer: Timer | undefined;
      const timeout = new Promise<'timeout'>((resolve) => {
        timer = deps.clock.setTimeout(() => resolve('timeout'), timeoutMs);
        timer.unref?.();
      });
      const done = await Promise.race([
        provider.shutdown().then(() => 'flushed' as const),
        timeout,
      ]);
      if (timer !== undefined) deps.clock.clearTimeout(timer);
      if (done === 'timeout') deps.logger.warn({ event: 'tracing_flush_timeout', timeoutMs });
    },
  };
}

function sampler(s: SamplerSettings): Sampler {
  const root: Sampler =
    s.ratio >= 1
      ? new AlwaysOnSampler()
      : s.ratio <= 0
        ? new AlwaysOffSampler()
        : new TraceIdRatioBasedSampler(s.ratio);
  return s.parentBased ? new ParentBasedSampler({ root }) : root;
}

type Tracer = ReturnType<BasicTracerProvider['getTracer']>;

/**
 * Token renewals as spans of their own (each a root: a renewal serves many requests, it belongs
 * to none), remembered so that the requests that waited for a token can link to the renewal
 * that brought it.
 */
class RenewalTracer implements RenewalObserver {
  /** The renewal in flight, if any. */
  inFlight: SpanContext | undefined;
  /** The renewal that brought the token now held. */
  lastIssued: SpanContext | undefined;
  readonly #url: URL;

  readonly #tracer: Tracer;
  readonly #deps: PeerDeps;

  constructor(tracer: Tracer, deps: PeerDeps) {
    this.#tracer = tracer;
    this.#deps = deps;
    this.#url = new URL(deps.tokenUrl);
  }

  renewalStarted(cause: RenewalCause): RenewalObservation {
    const url = this.#url;
    const span = this.#tracer.startSpan(
      'token renewal',
      {
        kind: SpanKind.CLIENT,
        startTime: now(),
        attributes: {
          [ATTR_HTTP_REQUEST_METHOD]: 'POST',
          [ATTR_SERVER_ADDRESS]: url.hostname,
          [ATTR_SERVER_PORT]: Number(url.port || (url.protocol === 'https:' ? 443 : 80)),
          // Without the query: the contract keeps query strings out of every attribute.
          [ATTR_URL_FULL]: `${url.origin}${url.pathname}`,
          [ATTR_ROUTE]: this.#deps.route,
          [ATTR_RENEWAL_CAUSE]: cause,
        },
      },
      ROOT_CONTEXT,
    );
    const context = span.spanContext();
    this.inFlight = context;
    return {
      succeeded: () => {
        span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, 200);
        span.end(now());
        if (this.inFlight === context) this.inFlight = undefined;
        this.lastIssued = context;
      },
      failed: (reason, status) => {
        if (status !== undefined) span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
        span.setAttribute(ATTR_ERROR_TYPE, reason);
        span.setStatus({ code: SpanStatusCode.ERROR, message: reason });
        span.end(now());
        if (this.inFlight === context) this.inFlight = undefined;
      },
    };
  }
}

/** Reads `traceparent`/`tracestate` from the two values taken out of the client's headers. */
const getter: TextMapGetter<{ traceparent?: string; tracestate?: string }> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) =>
    key === 'traceparent'
      ? carrier.traceparent
      : key === 'tracestate'
        ? carrier.tracestate
        : undefined,
};
const propagator = new W3CTraceContextPropagator();

/**
 * One request's spans: the server span from arrival to the response's end, a `queue wait`
 * child while it waits for a start, a `token wait` (linked to the renewal that brought the
 * token), and one client span per upstream attempt, whose context is the `traceparent` the
 * upstream receives.
 */
class RequestTrace implements RequestObservation {
  readonly stats: TransferStats = { bytesIn: 0, bytesOut: 0 };
  readonly #server: Span;
  readonly #context: Context;
  #carrier: { traceparent?: string; tracestate?: string } = {};
  /** Index in the forwarded header list of the `traceparent` value this proxy sets. */
  #slot = -1;
  #queue: Span | undefined;
  #queueContext: Context | undefined;
  #tokenWait: Span | undefined;
  #attempt: Span | undefined;
  #attempts = 0;

  readonly #tracer: Tracer;
  readonly #renewals: RenewalTracer;
  readonly #peer: { address: string; port: number; base: string };
  readonly #req: IncomingMessage;

  constructor(
    tracer: Tracer,
    renewals: RenewalTracer,
    route: string,
    peer: { address: string; port: number; base: string },
    req: IncomingMessage,
    res: ServerResponse,
  ) {
    this.#tracer = tracer;
    this.#renewals = renewals;
    this.#peer = peer;
    this.#req = req;
    this.#carrier = traceHeaders(req.rawHeaders);
    const parent = propagator.extract(ROOT_CONTEXT, this.#carrier, getter);
    const method = req.method ?? 'GET';
    const socket = req.socket;
    this.#server = tracer.startSpan(
      method,
      {
        kind: SpanKind.SERVER,
        startTime: now(),
        attributes: {
          [ATTR_HTTP_REQUEST_METHOD]: method,
          [ATTR_URL_PATH]: withoutQuery(req.url ?? ''),
          [ATTR_URL_SCHEME]: 'http',
          [ATTR_SERVER_ADDRESS]: socket.localAddress ?? '',
          [ATTR_SERVER_PORT]: socket.localPort ?? 0,
          [ATTR_CLIENT_ADDRESS]: socket.remoteAddress ?? '',
          [ATTR_NETWORK_PROTOCOL_VERSION]: req.httpVersion,
          [ATTR_ROUTE]: route,
          ...(typeof req.headers['user-agent'] === 'string'
            ? { [ATTR_USER_AGENT_ORIGINAL]: req.headers['user-agent'] }
            : {}),
        },
      },
      parent,
    );
    this.#context = trace.setSpan(ROOT_CONTEXT, this.#server);
    res.once('close', () => this.#end(res));
  }

  get traceId(): string {
    return this.#server.spanContext().traceId;
  }

  headers(headers: string[]): void {
    // The client's trace headers are replaced by this proxy's: its span is the upstream's parent.
    removeTraceHeaders(headers);
    const at = headers.length - 2; // before the `authorization` slot, which must stay last
    const added = ['traceparent', ''];
    if (this.#carrier.tracestate !== undefined && this.#carrier.traceparent !== undefined)
      added.push('tracestate', this.#carrier.tracestate);
    headers.splice(at, 0, ...added);
    this.#slot = at + 1;
  }

  queueStarted(): void {
    this.#queue = this.#tracer.startSpan(
      'queue wait',
      { kind: SpanKind.INTERNAL, startTime: now() },
      this.#context,
    );
    this.#queueContext = trace.setSpan(ROOT_CONTEXT, this.#queue);
  }

  queueEnded(error?: unknown): void {
    if (!this.#queue) return;
    failSpan(this.#queue, error);
    this.#queue.end(now());
    this.#queue = undefined;
    this.#queueContext = undefined;
  }

  tokenWaitStarted(): void {
    const inFlight = this.#renewals.inFlight;
    this.#tokenWait = this.#tracer.startSpan(
      'token wait',
      {
        kind: SpanKind.INTERNAL,
        startTime: now(),
        ...(inFlight ? { links: [{ context: inFlight }] } : {}),
      },
      this.#queueContext ?? this.#context,
    );
    this.#waitingFor = inFlight;
  }

  #waitingFor: SpanContext | undefined;

  tokenWaitEnded(error?: unknown): void {
    const span = this.#tokenWait;
    if (!span) return;
    // The renewal that brought the token, when it is not the one linked at the start already.
    const issued = this.#renewals.lastIssued;
    if (!error && issued && issued.spanId !== this.#waitingFor?.spanId)
      span.addLink({ context: issued } satisfies Link);
    failSpan(span, error);
    span.end(now());
    this.#tokenWait = undefined;
  }

  attemptStarted(headers: string[]): void {
    const method = this.#req.method ?? 'GET';
    const span = this.#tracer.startSpan(
      method,
      {
        kind: SpanKind.CLIENT,
        startTime: now(),
        attributes: {
          [ATTR_HTTP_REQUEST_METHOD]: method,
          [ATTR_SERVER_ADDRESS]: this.#peer.address,
          [ATTR_SERVER_PORT]: this.#peer.port,
          // The query is left out on purpose (it may carry API keys): no query in any attribute.
          [ATTR_URL_FULL]: `${this.#peer.base}${withoutQuery(this.#req.url ?? '')}`,
          ...(this.#attempts > 0 ? { [ATTR_HTTP_REQUEST_RESEND_COUNT]: this.#attempts } : {}),
        },
      },
      this.#context,
    );
    this.#attempts += 1;
    this.#attempt = span;
    if (this.#slot >= 0) headers[this.#slot] = traceparent(span.spanContext());
  }

  attemptEnded(status: number | undefined, error?: unknown): void {
    const span = this.#attempt;
    if (!span) return;
    if (status !== undefined) {
      span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
      // Client spans: every 4xx and 5xx is an error (HTTP semantic conventions).
      if (status >= 400) {
        span.setAttribute(ATTR_ERROR_TYPE, String(status));
        span.setStatus({ code: SpanStatusCode.ERROR });
      }
    } else failSpan(span, error);
    span.end(now());
    this.#attempt = undefined;
  }

  #end(res: ServerResponse): void {
    const span = this.#server;
    // A span left open by an error path (a client gone mid-wait) ends with the request.
    const ended = new Error('request ended');
    this.queueEnded(ended);
    this.tokenWaitEnded(ended);
    // A delivered attempt ends with its response, which may close before the handler hears of it.
    this.attemptEnded(res.headersSent ? res.statusCode : undefined, ended);
    span.setAttribute(ATTR_REQUEST_BODY_SIZE, this.stats.bytesIn);
    span.setAttribute(ATTR_RESPONSE_BODY_SIZE, this.stats.bytesOut);
    const code = res.getHeader(ERROR_HEADER);
    if (!res.headersSent) {
      span.setAttribute(ATTR_ERROR_TYPE, 'client_closed');
    } else {
      span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, res.statusCode);
      if (typeof code === 'string') span.setAttribute(ATTR_ERROR_TYPE, code);
      else if (res.statusCode >= 500) span.setAttribute(ATTR_ERROR_TYPE, String(res.statusCode));
      // Server spans: only 5xx are errors; a 4xx is the client's.
      if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
    }
    span.end(now());
  }
}

/**
 * The epoch time (ms) of `performance.now()`'s zero, read once. Span times are not the injected
 * clock's on purpose: the exporter needs real, monotonic, sub-millisecond times, and no
 * behaviour depends on them (fake time has nothing to control here).
 */
const anchor = Date.now() - performance.now();

/**
 * Every start and end from one monotonic clock with one anchor, as `[seconds, nanoseconds]`.
 * Left to itself the SDK anchors each span on its own `Date.now()`, whose millisecond steps can
 * put a child's end after its parent's.
 */
function now(): HrTime {
  const ms = anchor + performance.now();
  const seconds = Math.floor(ms / 1000);
  return [seconds, Math.min(999_999_999, Math.round((ms - seconds * 1000) * 1e6))];
}

/** Marks a span failed with the error's class, never its message (it could quote a header). */
function failSpan(span: Span, error: unknown): void {
  if (error === undefined) return;
  const type = proxyErrorCode(error) ?? 'aborted';
  span.setAttribute(ATTR_ERROR_TYPE, type);
  span.setStatus({ code: SpanStatusCode.ERROR, message: type });
}

/** W3C Trace Context `traceparent` of a span (version 00). */
function traceparent(c: SpanContext): string {
  return `00-${c.traceId}-${c.spanId}-0${(c.traceFlags & 1).toString(16)}`;
}

function withoutQuery(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

/** The first `traceparent` and the `tracestate` (joined) of a raw header list. */
function traceHeaders(raw: readonly string[]): { traceparent?: string; tracestate?: string } {
  const out: { traceparent?: string; tracestate?: string } = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    const value = raw[i + 1] as string;
    if (name === 'traceparent') out.traceparent ??= value;
    else if (name === 'tracestate')
      out.tracestate = out.tracestate === undefined ? value : `${out.tracestate},${value}`;
  }
  return out;
}

/** Removes every `traceparent` and `tracestate` field from a flat header list, in place. */
function removeTraceHeaders(headers: string[]): void {
  for (let i = headers.length - 2; i >= 0; i -= 2) {
    const name = (headers[i] as string).toLowerCase();
    if (name === 'traceparent' || name === 'tracestate') headers.splice(i, 2);
  }
}
