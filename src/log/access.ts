import type { IncomingMessage, ServerResponse } from 'node:http';
import { ERROR_HEADER } from '../proxy/errors.js';
import type { RequestObservation, RequestObserver, TransferStats } from '../tracing/types.js';
import type { Logger } from './logger.js';

/** Paths longer than this are cut in the log line: one line per request must stay one line. */
const MAX_PATH = 2048;

/**
 * The access log (`log.access: true`, docs/tracing.md "Access log"): one `{"event":"access"}`
 * line per request accepted on the proxy port, written when its response ends or its client goes
 * away. Wraps the tracing observer when both are on, so the handler sees one observer and the
 * line carries the trace id.
 */
export class AccessLog implements RequestObserver {
  readonly #log: Logger;

  readonly #inner: RequestObserver | undefined;

  constructor(
    logger: Logger,
    readonly route: string,
    inner?: RequestObserver,
  ) {
    this.#inner = inner;
    // Turning the access log on is its own decision: `log.level: warn` does not silence it.
    const level = logger.levelVal <= 30 ? logger.level : 'info';
    this.#log = logger.child({ route }, { level });
  }

  begin(req: IncomingMessage, res: ServerResponse): RequestObservation {
    return new AccessRecord(this.#log, req, res, this.#inner?.begin(req, res));
  }
}

/** One request's line, filled in as the handler reports its steps. */
class AccessRecord implements RequestObservation {
  readonly stats: TransferStats;
  /**
   * Durations use `performance.now()`, not the injected clock: sub-millisecond intervals for the
   * log line, never a deadline, so fake time has nothing to control here.
   */
  readonly #started = performance.now();
  #queueStartedAt = 0;
  #queueMs = 0;
  /** When the attempt still open started; `undefined` between attempts. */
  #attemptStartedAt: number | undefined;
  #upstreamMs = 0;
  #attempts = 0;

  readonly #log: Logger;
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  readonly #inner: RequestObservation | undefined;

  constructor(
    log: Logger,
    req: IncomingMessage,
    res: ServerResponse,
    inner: RequestObservation | undefined,
  ) {
    this.#log = log;
    this.#req = req;
    this.#res = res;
    this.#inner = inner;
    this.stats = inner?.stats ?? { bytesIn: 0, bytesOut: 0 };
    res.once('close', () => this.#write());
  }

  get traceId(): string | undefined {
    return this.#inner?.traceId;
  }

  headers(headers: string[]): void {
    this.#inner?.headers(headers);
  }

  queueStarted(): void {
    this.#queueStartedAt = performance.now();
    this.#inner?.queueStarted();
  }

  queueEnded(error?: unknown): void {
    this.#queueMs += performance.now() - this.#queueStartedAt;
    this.#inner?.queueEnded(error);
  }

  tokenWaitStarted(): void {
    this.#inner?.tokenWaitStarted();
  }

  tokenWaitEnded(error?: unknown): void {
    this.#inner?.tokenWaitEnded(error);
  }

  attemptStarted(headers: string[]): void {
    this.#attempts += 1;
    this.#attemptStartedAt = performance.now();
    this.#inner?.attemptStarted(headers);
  }

  attemptEnded(status: number | undefined, error?: unknown): void {
    this.#closeAttempt();
    this.#inner?.attemptEnded(status, error);
  }

  /** From sending to the end of the response (or the failure), summed over the attempts. */
  #closeAttempt(): void {
    if (this.#attemptStartedAt === undefined) return;
    this.#upstreamMs += performance.now() - this.#attemptStartedAt;
    this.#attemptStartedAt = undefined;
  }

  #write(): void {
    const req = this.#req;
    const res = this.#res;
    // The response can close before the handler hears that its attempt ended.
    this.#closeAttempt();
    const url = req.url ?? '';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const error = res.getHeader(ERROR_HEADER);
    const errorCode = typeof error === 'string' ? error : null;
    if (errorCode !== null) this.stats.bytesOut = Number(res.getHeader('content-length') ?? 0);
    this.#log.info({
      event: 'access',
      method: req.method ?? '',
      path: path.length > MAX_PATH ? path.slice(0, MAX_PATH) : path,
      // 0: no response was sent (the client went away first).
      status: res.headersSent ? res.statusCode : 0,
      error: errorCode,
      durationMs: ms(performance.now() - this.#started),
      queueMs: ms(this.#queueMs),
      upstreamMs: ms(this.#upstreamMs),
      attempts: this.#attempts,
      bytesIn: this.stats.bytesIn,
      bytesOut: this.stats.bytesOut,
      traceId: this.traceId ?? null,
    });
  }
}

/** Milliseconds with one decimal: sub-millisecond noise is not worth the digits. */
function ms(value: number): number {
  return Math.round(value * 10) / 10;
}
