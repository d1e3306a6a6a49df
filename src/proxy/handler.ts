import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Clock } from '../clock.js';
import type { Config } from '../config/config.js';
import type { Secret } from '../credentials/secret.js';
import { ERROR_HEADER, ProxyError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Pacer } from '../pacing/types.js';
import type { TokenManager } from '../token/manager.js';
import { Cancellation } from './cancellation.js';
import { type Attempt, type Forwarder, type Outgoing, SlotForfeited } from './forward.js';
import { type RequestHead, rawHeader, requestHead, withBearer } from './headers.js';
import { pathPrefix, upstreamPath } from './target.js';

/**
 * Bodies up to this size are kept in memory so a request can be replayed after a 401 (the
 * contract's "small enough to have been kept"). 64 KiB covers typical JSON API calls while 1000
 * queued requests hold at most 64 MiB; larger or unsized bodies are streamed and not retried.
 */
export const REPLAY_LIMIT_BYTES = 64 * 1024;

/** The cancellation reason when the client goes away (the request is then never sent, or aborted). */
class ClientGone extends Error {
  constructor() {
    super('client disconnected');
    this.name = 'ClientGone';
  }
}

export interface HandlerDeps {
  config: Config;
  tokens: TokenManager;
  pacer: Pacer;
  forwarder: Forwarder;
  metrics: Metrics;
  logger: Logger;
  clock: Clock;
}

/**
 * The proxy port's request handler (CONTRACT.md, "Forwarding" and "The proxy's own errors"):
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

  constructor(private readonly deps: HandlerDeps) {
    this.#prefix = pathPrefix(new URL(deps.config.upstream.url));
    this.#onWire = () => deps.pacer.sent();
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
    if (this.#shuttingDown) {
      res.shouldKeepAlive = false;
      this.#reject(res, new ProxyError('shutting_down'));
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
    void this.#forward(req, res, path);
  };

  /**
   * Stops taking new requests (they get 503 `shutting_down`) and resolves when every accepted
   * request is answered or `timeoutMs` has passed; returns how many were still running.
   */
  async drain(timeoutMs: number): Promise<number> {
    this.#shuttingDown = true;
    if (this.#inFlight === 0) return 0;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.#drained = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    return this.#inFlight;
  }

  async #forward(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const { config, clock, tokens } = this.deps;
    const cancel = new Cancellation();
    const onClose = () => {
      if (!res.writableFinished) cancel.cancel(new ClientGone());
    };
    // Left attached: once the response has finished, 'close' finds it finished and does nothing
    // (cheaper than once() and off() on every request).
    res.on('close', onClose);
    const receivedAt = clock.now();
    try {
      const head = requestHead(req.rawHeaders);
      const pending = this.#body(req, head);
      const body = pending instanceof Promise ? await pending : pending;
      // The pacer observes m2m_proxy_queue_wait_seconds; the deadline counts from arrival.
      let token =
        this.#startNow() ?? (await this.#slot(receivedAt + config.rateLimit.queue.timeout, cancel));
      const replayable = body === null || Buffer.isBuffer(body);
      const outgoing: Outgoing = {
        method: req.method ?? 'GET',
        path,
        headers: head.headers,
        body,
        replayOn401: replayable ? () => tokens.shouldRenewAfterRejection(token) : undefined,
        onWire: this.#onWire,
      };
      let attempt = await this.#attempt(res, outgoing, token, cancel);
      if (!attempt.delivered) {
        // 401 on a replayable request: renew once (shared by every request that saw it), then
        // replay once through the pacer: retries count against the budget too.
        await tokens.renewAfterRejection(token);
        token =
          this.#startNow() ??
          (await this.#slot(clock.now() + config.rateLimit.queue.timeout, cancel));
        outgoing.replayOn401 = undefined;
        attempt = await this.#attempt(res, outgoing, token, cancel);
      }
    } catch (err) {
      this.#fail(req, res, cancel.reason instanceof ClientGone ? cancel.reason : err);
    } finally {
      this.#inFlight -= 1;
      if (this.#inFlight === 0) this.#drained?.();
    }
  }

  /** The fast path: a token is held and the pacer lets the request start without waiting. */
  #startNow(): Secret | undefined {
    const token = this.deps.tokens.current();
    return token && this.deps.pacer.tryAcquireNow() ? token : undefined;
  }

  /** Waits for a valid token and a pacing slot within one deadline; returns the token to use. */
  async #slot(deadline: number, cancel: Cancellation): Promise<Secret> {
    const { pacer, tokens } = this.deps;
    await pacer.acquire({
      deadline,
      signal: cancel.signal,
      ready: (d, s) => tokens.waitForToken(d, s),
    });
    const token = tokens.current();
    if (!token) {
      pacer.sent(); // the granted start is given up before it reached the wire
      throw new ProxyError('token_unavailable');
    }
    return token;
  }

  async #attempt(
    res: ServerResponse,
    outgoing: Outgoing,
    token: Secret,
    cancel: Cancellation,
  ): Promise<{ delivered: boolean }> {
    const { metrics, clock, pacer } = this.deps;
    withBearer(outgoing.headers, token.reveal());
    let attempt: Attempt;
    for (;;) {
      try {
        attempt = await this.deps.forwarder.send(outgoing, res, cancel);
        break;
      } catch (err) {
        if (!(err instanceof SlotForfeited)) throw err;
        // Stalled between its pacing slot and the socket: nothing was sent; pace it again.
        const again = await this.#slot(
          clock.now() + this.deps.config.rateLimit.queue.timeout,
          cancel,
        );
        withBearer(outgoing.headers, again.reveal());
      }
    }
    metrics.upstreamResponse(attempt.status);
    metrics.upstreamDuration.observe(attempt.headersAfter);
    if (attempt.status === 429 || attempt.status === 503) {
      const wait = retryAfterMs(rawHeader(attempt.rawHeaders, 'retry-after'), clock.now());
      if (wait !== undefined) {
        pacer.pauseUntil(clock.now() + wait); // the pacer caps it at queue.timeout
        this.deps.logger.warn({
          event: 'upstream_pushback',
          status: attempt.status,
          pauseMs: wait,
        });
      }
    }
    return attempt;
  }

  /**
   * No body → `null`; a declared length within the replay limit → the bytes (so a 401 can be
   * replayed); otherwise the request stream itself, forwarded as it arrives. Only reading the
   * bytes is asynchronous (a GET does not pay for a promise).
   */
  #body(req: IncomingMessage, head: RequestHead): Promise<Buffer> | IncomingMessage | null {
    const length = head.contentLength;
    if (length === undefined && !head.chunked) return null;
    const declared = Number(length);
    if (length === undefined || !(declared <= REPLAY_LIMIT_BYTES)) return req;
    if (declared === 0) return null;
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.once('end', () =>
        resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)),
      );
      req.once('error', reject);
      req.once('close', () => {
        if (!req.complete) reject(new ClientGone());
      });
    });
  }

  #fail(req: IncomingMessage, res: ServerResponse, err: unknown): void {
    if (err instanceof ClientGone) {
      this.deps.logger.debug({ event: 'client_gone', method: req.method });
      return;
    }
    const error = err instanceof ProxyError ? err : undefined;
    if (!error || res.headersSent) {
      // A failure after the upstream's response began: the only honest signal left is to cut
      // the connection so the client sees a truncated response, not a complete wrong one.
      this.deps.logger.warn({
        event: 'response_aborted',
        err: (err as Error)?.message,
        code: error?.code,
      });
      res.destroy();
      return;
    }
    if (error.code === 'upstream_unreachable') {
      const cause = error.cause as NodeJS.ErrnoException | undefined;
      this.deps.logger.warn({
        event: 'upstream_unreachable',
        code: cause?.code,
        err: cause?.message,
      });
    }
    this.#reject(res, error);
  }

  #reject(res: ServerResponse, error: ProxyError): void {
    this.deps.metrics.requestsRejected.inc({ reason: error.code });
    sendError(res, error);
  }
}

/** Writes one of the catalogue's responses. */
export function sendError(res: ServerResponse, error: ProxyError): void {
  const body = error.body();
  const headers: Record<string, string | number> = {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    [ERROR_HEADER]: error.code,
  };
  if (error.retryAfterSeconds !== undefined)
    headers['retry-after'] = Math.max(1, Math.ceil(error.retryAfterSeconds));
  res.writeHead(error.status, headers).end(body);
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
