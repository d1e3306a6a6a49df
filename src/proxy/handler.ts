/*
 * Longer than the project's ~300 lines on purpose: one request's path (validate → keep or stream
 * the body → admit → attempt → replay after a 401 → fail) is one flow whose error and clean-up
 * paths must be read together. The port's server, the error catalogue, the forwarder, headers and
 * target rules are already files of their own.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Clock } from '../clock.js';
import type { Config, RouteConfig } from '../config/config.js';
import type { Secret } from '../credentials/secret.js';
import { M2mError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { RouteMetrics } from '../metrics/metrics.js';
import type { Pacer } from '../pacing/types.js';
import type { TokenManager } from '../token/manager.js';
import type { RequestObservation, RequestObserver } from '../tracing/types.js';
import { Cancellation } from './cancellation.js';
import { ProxyError, toProxyError } from './errors.js';
import { type Attempt, type Forwarder, type Outgoing, SlotForfeited } from './forward.js';
import { type RequestHead, rawHeader, requestHead, withBearer } from './headers.js';
import { pathPrefix, upstreamPath } from './target.js';

/**
 * Bodies up to this size are kept in memory so a request can be replayed after a 401 (the
 * contract's "small enough to have been kept"). 64 KiB covers typical JSON API calls while 1000
 * queued requests hold at most 64 MiB; larger or unsized bodies are streamed and not retried.
 */
const REPLAY_LIMIT_BYTES = 64 * 1024;

/** The cancellation reason when the client goes away (the request is then never sent, or aborted). */
class ClientGone extends M2mError {
  readonly code = 'client_gone';

  constructor() {
    super('client disconnected');
  }
}

/** Bytes reserved by kept (replayable) bodies, bounded by `limits.replayBytes`. */
export interface ReplayBudget {
  held: number;
}

export interface HandlerDeps {
  /** The route this handler serves (a file without `routes` has one, `default`). */
  config: Pick<RouteConfig, 'upstream' | 'rateLimit'>;
  /** The process's limits (`limits.bodyTimeout`, `limits.replayBytes`). */
  limits: Config['limits'];
  /** Bytes held by kept bodies, shared by every route's handler: the budget is the process's. */
  replay: ReplayBudget;
  tokens: TokenManager;
  pacer: Pacer;
  forwarder: Forwarder;
  metrics: RouteMetrics;
  logger: Logger;
  clock: Clock;
  /** The access log and/or tracing; absent when both are off (then nothing is observed). */
  observer?: RequestObserver | undefined;
}

/**
 * The proxy port's request handler (docs/behaviour.md, "Forwarding" and "The proxy's own errors"):
 * validate the target → wait for a token and a pacing slot (one deadline) → forward with the
 * bearer → on a 401 renew once and replay once. Every request ends in a response or, when the
 * client left, in nothing sent upstream.
 */
export class ProxyHandler {
  readonly #prefix: string;
  #inFlight = 0;
  #shuttingDown = false;
  #drained: (() => void) | undefined;

  /** Tells the pacer an attempt reached the wire (one function for every request). */
  readonly #onWire: () => boolean;

  readonly #deps: HandlerDeps;

  constructor(deps: HandlerDeps) {
    this.#deps = deps;
    this.#prefix = pathPrefix(new URL(deps.config.upstream.url));
    this.#onWire = () => deps.pacer.onWire();
  }

  /** Requests accepted and not yet answered. */
  get inFlight(): number {
    return this.#inFlight;
  }

  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /** Node's `request` listener. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    const observed = this.#deps.observer?.begin(req, res);
    if (this.#shuttingDown) {
      this.#reject(res, new ProxyError('shutting_down'));
      return;
    }
    // TRACE echoes the request, bearer included, back to the client (RFC 9110 §9.3.8).
    if (req.method === 'TRACE' || req.method === 'TRACK') {
      this.#reject(res, new ProxyError('method_not_allowed'));
      req.resume();
      return;
    }
    const path = upstreamPath(this.#prefix, req.url);
    if (path === undefined) {
      this.#reject(
        res,
        new ProxyError('bad_request', 'The request target must be a path inside the upstream API.'),
      );
      req.resume();
      return;
    }
    this.#inFlight += 1;
    void this.#forward(req, res, path, observed);
  };

  /**
   * Stops taking new requests (they get 503 `shutting_down`) and resolves when every accepted
   * request is answered or `timeoutMs` has passed; returns how many were still running.
   */
  async drain(timeoutMs: number): Promise<number> {
    this.#shuttingDown = true;
    if (this.#inFlight === 0) return 0;
    const { clock } = this.#deps;
    await new Promise<void>((resolve) => {
      const timer = clock.setTimeout(resolve, timeoutMs);
      this.#drained = () => {
        clock.clearTimeout(timer);
        resolve();
      };
    });
    return this.#inFlight;
  }

  async #forward(
    req: IncomingMessage,
    res: ServerResponse,
    path: string,
    observed: RequestObservation | undefined,
  ): Promise<void> {
    const { config, clock, tokens } = this.#deps;
    const cancel = new Cancellation();
    const onClose = () => {
      if (!res.writableFinished) cancel.cancel(new ClientGone());
    };
    // Left attached: once the response has finished, 'close' finds it finished and does nothing
    // (cheaper than once() and off() on every request).
    res.on('close', onClose);
    const receivedAt = clock.now();
    let kept = 0;
    try {
      const head = requestHead(req.rawHeaders);
      observed?.headers(head.headers);
      kept = this.#keep(head);
      const pending = kept > 0 ? this.#read(req, kept) : this.#body(req, head);
      const body = pending instanceof Promise ? await pending : pending;
      if (observed && Buffer.isBuffer(body)) observed.stats.bytesIn = body.length;
      // The pacer observes m2m_proxy_queue_wait_seconds; the deadline counts from arrival.
      let token =
        this.#startNow() ??
        (await this.#admit(receivedAt + config.rateLimit.queue.timeout, cancel, observed));
      const replayable = body === null || Buffer.isBuffer(body);
      const outgoing: Outgoing = {
        method: req.method ?? 'GET',
        path,
        headers: head.headers,
        body,
        replayOn401: replayable ? () => tokens.shouldRenewAfterRejection(token) : undefined,
        onWire: this.#onWire,
        stats: observed?.stats,
      };
      let attempt = await this.#attempt(res, outgoing, token, cancel, observed);
      if (!attempt.delivered) {
        // 401 on a replayable request: renew once (shared by every request that saw it), then
        // replay once through the pacer: retries count against the budget too.
        observed?.tokenWaitStarted();
        await tokens.renewAfterRejection(token); // never rejects
        observed?.tokenWaitEnded();
        token =
          this.#startNow() ??
          (await this.#admit(clock.now() + config.rateLimit.queue.timeout, cancel, observed));
        outgoing.replayOn401 = undefined;
        attempt = await this.#attempt(res, outgoing, token, cancel, observed);
      }
    } catch (err) {
      this.#fail(req, res, cancel.reason instanceof ClientGone ? cancel.reason : err);
    } finally {
      this.#deps.replay.held -= kept;
      this.#inFlight -= 1;
      if (this.#inFlight === 0) this.#drained?.();
    }
  }

  /** The fast path: a token is held and the pacer lets the request start without waiting. */
  #startNow(): Secret | undefined {
    const token = this.#deps.tokens.current();
    return token && this.#deps.pacer.tryAcquireNow() ? token : undefined;
  }

  /** Waits for a valid token and a pacing slot within one deadline; returns the token to use. */
  async #admit(
    deadline: number,
    cancel: Cancellation,
    observed: RequestObservation | undefined,
  ): Promise<Secret> {
    const { pacer, tokens } = this.#deps;
    const acquired = pacer.acquire({
      deadline,
      signal: cancel.signal,
      ready: observed
        ? (d, s) => observedTokenWait(tokens, observed, d, s)
        : (d, s) => tokens.waitForToken(d, s),
    });
    if (observed) {
      observed.queueStarted();
      await acquired.then(
        () => observed.queueEnded(),
        (err: unknown) => {
          observed.queueEnded(err);
          throw err;
        },
      );
    } else await acquired;
    const token = tokens.current();
    if (!token) {
      pacer.onWire(); // the granted start is given up before it reached the wire
      throw new ProxyError('token_unavailable');
    }
    return token;
  }

  async #attempt(
    res: ServerResponse,
    outgoing: Outgoing,
    token: Secret,
    cancel: Cancellation,
    observed: RequestObservation | undefined,
  ): Promise<{ delivered: boolean }> {
    const { metrics, clock, pacer } = this.#deps;
    withBearer(outgoing.headers, token.reveal());
    let attempt: Attempt;
    for (;;) {
      try {
        if (observed) {
          observed.attemptStarted(outgoing.headers);
          attempt = await this.#deps.forwarder.send(outgoing, res, cancel).then(
            (a) => {
              observed.attemptEnded(a.status);
              return a;
            },
            (err: unknown) => {
              observed.attemptEnded(undefined, err);
              throw err;
            },
          );
        } else attempt = await this.#deps.forwarder.send(outgoing, res, cancel);
        break;
      } catch (err) {
        if (!(err instanceof SlotForfeited)) throw err;
        // Stalled between its pacing slot and the socket: nothing was sent; pace it again.
        const again = await this.#admit(
          clock.now() + this.#deps.config.rateLimit.queue.timeout,
          cancel,
          undefined,
        );
        withBearer(outgoing.headers, again.reveal());
      }
    }
    if (attempt.status !== 401) this.#deps.tokens.accepted(token);
    // A 401 that goes back to the client (a streamed body, or the replay's own 401) still renews
    // the token: at once if it had worked, else within the 401 backoff (the manager decides).
    else if (attempt.delivered) void this.#deps.tokens.renewAfterRejection(token);
    metrics.upstreamResponse(attempt.status);
    metrics.upstreamDuration.observe(attempt.headersAfter);
    if (attempt.status === 429 || attempt.status === 503) {
      const wait = retryAfterMs(rawHeader(attempt.rawHeaders, 'retry-after'), clock.now());
      if (wait !== undefined) {
        pacer.pauseUntil(clock.now() + wait); // the pacer caps it at queue.timeout
        this.#deps.logger.warn({
          event: 'upstream_pushback',
          status: attempt.status,
          pauseMs: wait,
        });
      }
    }
    return attempt;
  }

  /**
   * The bytes of a body to keep for a replay (its declared length, within the replay limit),
   * reserved from `limits.replayBytes`; 0 when the body is streamed or absent. When the budget is
   * spent the request is refused with 429 before a byte of its body is read: memory held for
   * requests stays bounded however many clients send at once.
   */
  #keep(head: RequestHead): number {
    const length = head.contentLength;
    if (length === undefined) return 0;
    const declared = Number(length);
    const budget = this.#deps.limits.replayBytes;
    if (!(declared > 0 && declared <= REPLAY_LIMIT_BYTES) || budget === 0) return 0;
    if (this.#deps.replay.held + declared > budget) {
      throw new ProxyError(
        'rate_limited',
        'Too many request bodies are held for the upstream: try again shortly.',
        { retryAfterMs: 1000 },
      );
    }
    this.#deps.replay.held += declared;
    return declared;
  }

  /**
   * No body → `null`; a body that is not kept → the request stream itself, forwarded as it
   * arrives (a GET does not pay for a promise).
   */
  #body(req: IncomingMessage, head: RequestHead): IncomingMessage | null {
    if (head.contentLength === undefined && !head.chunked) return null;
    return Number(head.contentLength) === 0 ? null : req;
  }

  /**
   * Reads a kept body. A client that does not deliver it within `limits.bodyTimeout` gets 408
   * `request_timeout` (nothing has been sent upstream yet).
   */
  #read(req: IncomingMessage, declared: number): Promise<Buffer> {
    const { clock, limits } = this.#deps;
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      const timer = clock.setTimeout(
        () => reject(new ProxyError('request_timeout')),
        limits.bodyTimeout,
      );
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.once('end', () => {
        clock.clearTimeout(timer);
        resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, declared));
      });
      req.once('error', (err) => {
        clock.clearTimeout(timer);
        reject(err);
      });
      req.once('close', () => {
        clock.clearTimeout(timer);
        if (!req.complete) reject(new ClientGone());
      });
    });
  }

  #fail(req: IncomingMessage, res: ServerResponse, err: unknown): void {
    if (err instanceof ClientGone) {
      this.#deps.logger.debug({ event: 'client_gone', method: req.method });
      return;
    }
    const error = toProxyError(err);
    if (res.headersSent) {
      // A failure after the upstream's response began: the only honest signal left is to cut
      // the connection so the client sees a truncated response, not a complete wrong one.
      this.#deps.logger.warn({
        event: 'response_aborted',
        err,
        code: error?.code,
      });
      res.destroy();
      return;
    }
    if (!error) {
      // A failure with no catalogue entry (a bug, a store that broke): nothing was sent yet, so
      // the client still gets an answer that says it came from the proxy, never a bare reset.
      this.#deps.logger.error({ event: 'internal_error', err, method: req.method });
      this.#reject(res, new ProxyError('internal_error', undefined, { cause: err }));
      return;
    }
    if (error.code === 'upstream_unreachable') {
      const cause = error.cause as NodeJS.ErrnoException | undefined;
      this.#deps.logger.warn({
        event: 'upstream_unreachable',
        code: cause?.code,
        err: cause,
      });
    }
    this.#reject(res, error);
  }

  #reject(res: ServerResponse, error: ProxyError): void {
    this.#deps.metrics.requestsRejected.inc({ reason: error.code });
    // The connection closes after the proxy's own error, and Node then destroys the socket once
    // the answer is flushed: a client that keeps its half open cannot hold the descriptor.
    res.shouldKeepAlive = false;
    sendError(res, error);
  }
}

/** `waitForToken`, with the wait reported to the observer when the request really waits. */
function observedTokenWait(
  tokens: TokenManager,
  observed: RequestObservation,
  deadline: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  if (tokens.current()) return Promise.resolve();
  observed.tokenWaitStarted();
  return tokens.waitForToken(deadline, signal).then(
    () => observed.tokenWaitEnded(),
    (err: unknown) => {
      observed.tokenWaitEnded(err);
      throw err;
    },
  );
}

/** Writes one of the catalogue's responses. */
function sendError(res: ServerResponse, error: ProxyError): void {
  const body = error.body();
  // Set one by one so that `getHeader` sees them (the access log and the span read the code and
  // size).
  for (const [name, value] of Object.entries(error.headers(body))) res.setHeader(name, value);
  res.writeHead(error.status).end(body);
}

/** `Retry-After` as milliseconds from now: delay-seconds or an HTTP-date (RFC 9110 §10.2.3). */
export function retryAfterMs(
  value: string | string[] | undefined,
  now: number,
): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (!text) return undefined;
  if (/^\s*\d+\s*$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}
