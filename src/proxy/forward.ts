import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Writable } from 'node:stream';
import { type Dispatcher, Pool } from 'undici';
import type { Config } from '../config/config.js';
import { ProxyError } from '../errors.js';
import type { Cancellation } from './cancellation.js';
import { clientResponseHeaders } from './headers.js';

/** How one attempt towards the upstream ended. */
export interface Attempt {
  status: number;
  /** Response headers as the upstream sent them (for `Retry-After`). */
  headers: Record<string, string | string[] | undefined>;
  /** False when the response was discarded so the request can be retried (a 401). */
  delivered: boolean;
  /** Seconds from sending until the response headers arrived. */
  headersAfter: number;
}

/** What an attempt sends. */
export interface Outgoing {
  method: string;
  path: string;
  headers: Record<string, string | string[]>;
  /** `null`: no body; a Buffer: a small body kept for a replay; the request itself: streamed. */
  body: Buffer | IncomingMessage | null;
  /**
   * Asked when the upstream answers 401: true discards the response so the request can be
   * replayed with a renewed token. Absent for bodies that cannot be replayed.
   */
  replayOn401?: () => boolean;
}

/** The cancellation reason of an upstream that took longer than `upstream.timeout`. */
const TIMED_OUT = Symbol('upstream timeout');

/** Discards a response body we are about to retry; undici needs somewhere to write it. */
const discard = () =>
  new Writable({
    write(_chunk, _enc, cb) {
      cb();
    },
  });

/**
 * Streams requests to the one upstream over a keep-alive undici `Pool` and streams each response
 * straight into the client's `ServerResponse` (no buffering in either direction).
 */
export class Forwarder {
  readonly #pool: Dispatcher;
  readonly #timeout: number;

  constructor(config: Config['upstream'], dispatcher?: Dispatcher) {
    const origin = new URL(config.url).origin;
    this.#timeout = config.timeout;
    this.#pool =
      dispatcher ??
      new Pool(origin, {
        // A whole-response timer in `send` enforces upstream.timeout; these keep undici's own
        // (longer) defaults from firing first or later than ours.
        headersTimeout: config.timeout,
        bodyTimeout: config.timeout,
        ...(config.caFile ? { connect: { ca: readFileSync(config.caFile, 'utf8') } } : {}),
      });
  }

  /**
   * Sends one attempt and delivers the response to `res`. Rejects with `upstream_timeout` when no
   * complete response arrives within `upstream.timeout`, `upstream_unreachable` for connection,
   * TLS and DNS failures, or the cancellation's reason when the client went away.
   */
  async send(out: Outgoing, res: ServerResponse, cancel: Cancellation): Promise<Attempt> {
    const timer = setTimeout(() => cancel.cancel(TIMED_OUT), this.#timeout);
    const sentAt = performance.now();
    let attempt: Attempt | undefined;
    try {
      await this.#pool.stream(
        {
          method: out.method as Dispatcher.HttpMethod,
          path: out.path,
          headers: out.headers,
          body: out.body,
          signal: cancel,
        },
        ({ statusCode, headers }) => {
          const delivered = !(statusCode === 401 && out.replayOn401?.());
          attempt = {
            status: statusCode,
            headers,
            delivered,
            headersAfter: (performance.now() - sentAt) / 1000,
          };
          if (!delivered) return discard();
          res.writeHead(statusCode, clientResponseHeaders(headers));
          return res;
        },
      );
    } catch (err) {
      if (cancel.reason === TIMED_OUT) throw new ProxyError('upstream_timeout');
      if (cancel.cancelled) throw cancel.reason;
      if (attempt) throw err; // the response had begun: nothing to replace it with
      throw new ProxyError('upstream_unreachable', undefined, { cause: err });
    } finally {
      clearTimeout(timer);
    }
    return attempt as Attempt;
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}
