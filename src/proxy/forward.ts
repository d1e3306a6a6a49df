import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import type { Clock, Timer } from '../clock.js';
import type { RouteConfig } from '../config/config.js';
import { M2mError } from '../errors.js';
import type { TransferStats } from '../tracing/types.js';
import { Pool } from '../undici.js';
import { readCaFile } from './ca-file.js';
import type { Cancellation } from './cancellation.js';
import { ProxyError } from './errors.js';
import { responseHeaders } from './headers.js';

/** How one attempt towards the upstream ended. */
export interface Attempt {
  status: number;
  /** Response headers as the upstream sent them (flat name/value list, for `Retry-After`). */
  rawHeaders: Buffer[];
  /** False when the response was discarded so the request can be retried (a 401). */
  delivered: boolean;
  /** Seconds from sending until the response headers arrived. */
  headersAfter: number;
}

/** What an attempt sends. */
export interface Outgoing {
  method: string;
  path: string;
  /** Flat name/value list, bearer included. */
  headers: string[];
  /** `null`: no body; a Buffer: a small body kept for a replay; the request itself: streamed. */
  body: Buffer | IncomingMessage | null;
  /**
   * Asked when the upstream answers 401: true discards the response so the request can be
   * replayed with a renewed token. Undefined for bodies that cannot be replayed, and for a replay.
   */
  replayOn401: (() => boolean) | undefined;
  /**
   * Called once per attempt: when the request is about to be written to a connected socket, or
   * when the attempt ends without getting that far (the pacer counts starts on the wire). False
   * before the write: the start came too late for its pacing slot, and the attempt ends with
   * `SlotForfeited` instead of being written.
   */
  onWire: () => boolean;
  /** Counts body bytes for the access log and spans; absent when neither is on. */
  stats?: TransferStats | undefined;
}

/**
 * The attempt was not written: it reached the socket too late for its pacing slot (the process
 * stalled after the slot was granted). Nothing went upstream; the caller paces it again.
 */
export class SlotForfeited extends M2mError {
  readonly code = 'slot_forfeited';

  constructor() {
    super('pacing slot forfeited: the request reached the socket too late for it');
  }
}

/** How much later than `upstream.timeout` undici's own header and body timers fire. */
const UNDICI_TIMEOUT_SLACK_MS = 1000;

/** Undici's errors that mean "the upstream was too slow", not "unreachable". */
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/** The cancellation reason of an upstream that took longer than `upstream.timeout`. */
class UpstreamTimedOut extends M2mError {
  readonly code = 'upstream_timeout';

  constructor() {
    super('the upstream did not answer within upstream.timeout');
  }
}

/** What a `Forwarder` is built from. */
export interface ForwarderDeps {
  /** The route's upstream block (`url`, `timeout`, `caFile`). */
  config: RouteConfig['upstream'];
  /** The `upstream.timeout` timer of every attempt. */
  clock: Clock;
  /** Where requests go; a keep-alive `Pool` to the upstream's origin when absent. */
  dispatcher?: Dispatcher | undefined;
}

/**
 * Sends requests to the one upstream over a keep-alive undici `Pool` and streams each response
 * straight into the client's `ServerResponse` (no buffering in either direction).
 */
export class Forwarder {
  readonly #pool: Dispatcher;
  readonly #timeout: number;
  readonly #clock: Clock;

  constructor(deps: ForwarderDeps) {
    const { config } = deps;
    const origin = new URL(config.url).origin;
    this.#timeout = config.timeout;
    this.#clock = deps.clock;
    this.#pool =
      deps.dispatcher ??
      new Pool(origin, {
        // A whole-response timer in `send` enforces upstream.timeout. Undici's own timers sit a
        // second behind it, so they never race it at the boundary (its errors are timeouts too,
        // see `#fail`); undici's defaults (300 s) would keep a stuck socket far longer.
        headersTimeout: config.timeout + UNDICI_TIMEOUT_SLACK_MS,
        bodyTimeout: config.timeout + UNDICI_TIMEOUT_SLACK_MS,
        ...(config.caFile ? { connect: { ca: readCaFile(config.caFile) } } : {}),
      });
  }

  /**
   * Sends one attempt and delivers the response to `res`. Rejects with `upstream_timeout` when no
   * complete response arrives within `upstream.timeout`, `upstream_unreachable` for connection,
   * TLS and DNS failures, or the cancellation's reason when the client went away.
   */
  send(out: Outgoing, res: ServerResponse, cancel: Cancellation): Promise<Attempt> {
    if (cancel.cancelled) {
      out.onWire();
      return Promise.reject(cancel.reason);
    }
    return new Promise((resolve, reject) => {
      const exchange = new Exchange(out, res, cancel, this.#clock, resolve, reject);
      exchange.timer = this.#clock.setTimeout(
        () => cancel.cancel(new UpstreamTimedOut()),
        this.#timeout,
      );
      cancel.onCancel = exchange.onCancel;
      this.#pool.dispatch(
        {
          method: out.method as Dispatcher.HttpMethod,
          path: out.path,
          headers: out.headers,
          body: out.body,
        },
        exchange,
      );
    });
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}

/**
 * One attempt as an undici dispatch handler: the response goes from undici's parser to `res`
 * without the `stream()` API's Writable plumbing (~15 % of the instructions per forwarded
 * request under callgrind). Its promise settles exactly once: at the end of the response, at the
 * first error, or at the cancellation (at once, even while undici is still connecting).
 */
class Exchange implements Dispatcher.DispatchHandler {
  timer: Timer | undefined;
  #abort: ((err?: Error) => void) | undefined;
  #resume: (() => void) | undefined;
  #attempt: Attempt | undefined;
  #settled = false;
  /** `out.onWire` was called (once per attempt). */
  #wired = false;
  /**
   * `performance.now()`, not the clock: a sub-millisecond interval for the upstream duration
   * histogram, never a deadline or a time of day, so fake time has nothing to control here.
   */
  readonly #sentAt = performance.now();
  readonly #out: Outgoing;
  readonly #res: ServerResponse;
  readonly #cancel: Cancellation;
  readonly #clock: Clock;
  readonly #resolve: (attempt: Attempt) => void;
  readonly #reject: (err: unknown) => void;

  constructor(
    out: Outgoing,
    res: ServerResponse,
    cancel: Cancellation,
    clock: Clock,
    resolve: (attempt: Attempt) => void,
    reject: (err: unknown) => void,
  ) {
    this.#out = out;
    this.#res = res;
    this.#cancel = cancel;
    this.#clock = clock;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  readonly onCancel = (): void => {
    this.#abort?.(new Error('cancelled'));
    this.#fail(undefined);
  };

  onConnect(abort: (err?: Error) => void): void {
    if (this.#settled) {
      abort(new Error('cancelled'));
      return;
    }
    this.#abort = abort;
    // The last step before undici writes the request, synchronously: a stall cannot come
    // between this check and the bytes leaving. undici turns the throw into `onError` and
    // leaves the connection open (nothing was written on it).
    if (!this.#onWire()) throw new SlotForfeited();
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    if (statusCode < 200) return true; // informational (103 Early Hints): not forwarded
    const delivered = !(statusCode === 401 && this.#out.replayOn401?.());
    this.#attempt = {
      status: statusCode,
      rawHeaders,
      delivered,
      headersAfter: (performance.now() - this.#sentAt) / 1000,
    };
    if (delivered) {
      this.#res.writeHead(statusCode, responseHeaders(rawHeaders));
      this.#resume = resume;
    }
    return true;
  }

  /**
   * A streamed request body's bytes (a kept one's size is known before it is sent). undici 7
   * passes the chunk, though its types still declare the older `(chunkSize, total)`.
   */
  onBodySent(chunk: number | Buffer | string): void {
    const stats = this.#out.stats;
    if (stats && this.#out.body !== null && !Buffer.isBuffer(this.#out.body))
      stats.bytesIn += typeof chunk === 'number' ? chunk : Buffer.byteLength(chunk);
  }

  onData(chunk: Buffer): boolean {
    // Discarded (a 401 to replay), or nobody to deliver it to any more.
    if (!this.#attempt?.delivered || this.#settled || this.#res.destroyed) return true;
    if (this.#out.stats) this.#out.stats.bytesOut += chunk.length;
    if (this.#res.write(chunk)) return true;
    // The client reads slower than the upstream sends: undici stops reading until it drains.
    if (this.#resume) this.#res.once('drain', this.#resume);
    return false;
  }

  onComplete(): void {
    if (this.#settled) return;
    this.#finish();
    const attempt = this.#attempt as Attempt;
    if (attempt.delivered) this.#res.end();
    this.#resolve(attempt);
  }

  onError(err: Error): void {
    this.#fail(err);
  }

  #fail(err: unknown): void {
    if (this.#settled) return;
    this.#finish();
    const cancel = this.#cancel;
    const timedOut =
      cancel.reason instanceof UpstreamTimedOut ||
      (!cancel.cancelled && TIMEOUT_CODES.has((err as { code?: string } | undefined)?.code ?? ''));
    // A timeout is a timeout whichever timer saw it first: the class of the answer must not
    // depend on which of two timers set to the same instant fires first.
    if (err instanceof SlotForfeited) this.#reject(err);
    else if (timedOut) this.#reject(new ProxyError('upstream_timeout'));
    else if (cancel.cancelled) this.#reject(cancel.reason);
    else if (this.#attempt)
      this.#reject(err); // the response had begun: nothing to replace it
    else this.#reject(new ProxyError('upstream_unreachable', undefined, { cause: err }));
  }

  #onWire(): boolean {
    if (this.#wired) return true;
    this.#wired = true;
    return this.#out.onWire();
  }

  #finish(): void {
    this.#onWire(); // ended before reaching the wire: the pacer must not wait for it
    this.#settled = true;
    if (this.timer !== undefined) this.#clock.clearTimeout(this.timer);
    if (this.#cancel.onCancel === this.onCancel) this.#cancel.onCancel = undefined;
  }
}
