/**
 * Fakes shared by the request-path unit tests (`test/unit/proxy`, `test/unit/token`,
 * `test/unit/credentials`, `test/unit/pacing`): a memory logger, a metrics reader, a token
 * manager and a pacer whose every call is recorded, a scripted upstream (an undici dispatcher),
 * a loopback proxy server and client, and fake time. Each test file builds its unit under test
 * through one factory of its own on top of these, so a change of constructor shape is adapted
 * in that one place.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, request, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import { Registry } from 'prom-client';
import type { Dispatcher } from 'undici';
import { vi } from 'vitest';
import type { RouteConfig } from '../../src/config/config.js';
import { Secret } from '../../src/credentials/secret.js';
import { createLogger, type Logger } from '../../src/log/logger.js';
import { Metrics, type RouteMetrics } from '../../src/metrics/metrics.js';
import type { AcquireOptions, Pacer } from '../../src/pacing/types.js';
import { toProxyError } from '../../src/proxy/errors.js';
import type { TokenManager } from '../../src/token/manager.js';

/* ------------------------------------------------------------------ time */

/**
 * Fake timers and `Date`, nothing else: `setImmediate` and `process.nextTick` stay real so that
 * loopback sockets and streams keep working while every timer of the code under test (through
 * the system clock or the globals) waits for `vi.advanceTimersByTimeAsync`.
 */
export function useFakeTime(now = 1_000_000): void {
  vi.useFakeTimers({
    now,
    toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'],
  });
}

/** Lets pending promise callbacks and I/O callbacks run, without moving fake time. */
export async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((r) => setImmediate(r));
}

/**
 * Waits (in real time, on `setImmediate`, never on a timer) until `condition` holds: for I/O on
 * loopback sockets, whose timing no fake clock controls. Loopback I/O takes microseconds; the
 * 5 s bound only decides how soon a broken test fails on a loaded machine, never its result.
 */
export async function until(condition: () => boolean, what: string): Promise<void> {
  const start = performance.now();
  while (!condition()) {
    if (performance.now() - start > 5000) throw new Error(`timed out waiting for ${what}`);
    await new Promise<void>((r) => setImmediate(r));
  }
}

/** A promise with its resolve/reject in hand. */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(err: unknown): void;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/* ------------------------------------------------------------ logs, metrics */

/** A pino logger (debug level, redaction on) writing parsed JSON lines into `lines`. */
export function memoryLogger(): {
  logger: Logger;
  lines: Record<string, unknown>[];
  text(): string;
} {
  const raw: string[] = [];
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger('debug', {
    write: (s: string) => {
      raw.push(s);
      lines.push(JSON.parse(s) as Record<string, unknown>);
    },
  });
  return { logger, lines, text: () => raw.join('') };
}

/** Log lines with `event`. */
export function events(lines: readonly Record<string, unknown>[], event: string) {
  return lines.filter((l) => l.event === event);
}

/** A fresh registry's metrics and the `default` route's view of them. */
export function routeMetrics(): { metrics: Metrics; route: RouteMetrics } {
  const metrics = new Metrics(new Registry(), { defaultMetrics: false });
  return { metrics, route: metrics.forRoutes(['default']) };
}

/**
 * The value of one series (`labels` must match exactly the labels given, `route` aside), or of
 * a histogram's `_count`. `undefined` when the series does not exist.
 */
export async function metric(
  metrics: Metrics,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  const json = await metrics.registry.getMetricsAsJSON();
  const found = json.find((m) => m.name === name);
  if (!found) return undefined;
  const values = found.values as Array<{
    value: number;
    labels: Record<string, string | number>;
    metricName?: string;
  }>;
  const wanted = String(found.type) === 'histogram' ? `${name}_count` : undefined;
  return values.find(
    (v) =>
      (wanted === undefined || v.metricName === wanted) &&
      Object.entries(labels).every(([k, value]) => String(v.labels[k]) === value),
  )?.value;
}

/** Every `m2m_proxy_requests_rejected_total` series that is not 0, as `{ reason: count }`. */
export async function rejections(metrics: Metrics): Promise<Record<string, number>> {
  const json = await metrics.registry.getMetricsAsJSON();
  const found = json.find((m) => m.name === 'm2m_proxy_requests_rejected_total');
  const out: Record<string, number> = {};
  for (const v of (found?.values ?? []) as Array<{ value: number; labels: { reason?: string } }>)
    if (v.value !== 0) out[String(v.labels.reason)] = v.value;
  return out;
}

/* ----------------------------------------------------------------- errors */

/**
 * What a rejection tells a caller, whatever class carries it: its stable `code` and its retry
 * delay in whole seconds (today `retryAfterSeconds`; a typed error may say `retryAfterMs`).
 */
export function answerOf(err: unknown): { code: unknown; retryAfterSeconds: number | undefined } {
  // As the proxy answers it: token and pacing errors through the catalogue's one translation.
  const answer = toProxyError(err);
  if (answer) return { code: answer.code, retryAfterSeconds: answer.retryAfterSeconds };
  return { code: (err as { code?: unknown } | undefined)?.code, retryAfterSeconds: undefined };
}

/* ------------------------------------------------------------ token manager */

/** A token endpoint's settings as the token tests use them (renew at 80 %, retry 1–60 s). */
export const TOKEN_CONFIG: RouteConfig['token'] = {
  url: 'https://idp.example.test/token',
  authMethod: 'client_secret_basic',
  credentials: {},
  params: {},
  timeout: 10_000,
  refreshAt: 0.8,
  minRemaining: 30_000,
  retry: { min: 1000, max: 60_000 },
};

/**
 * The token manager as the proxy handler uses it: `current` is whatever the test holds,
 * `renewAfterRejection` swaps in `next` (a renewal), and every call is recorded.
 */
export class FakeTokens {
  held: Secret | undefined;
  /** What a renewal after a 401 installs. */
  next: Secret | undefined;
  /** Answer of `shouldRenewAfterRejection`. */
  renewWorthIt = true;
  readonly calls = {
    current: 0,
    waitForToken: 0,
    renewAfterRejection: [] as string[],
    shouldRenewAfterRejection: [] as string[],
    accepted: [] as string[],
  };
  /** Called by `current()` before it answers: lets a test change the token at that moment. */
  onCurrent: ((count: number) => void) | undefined;

  constructor(token = 'token-A') {
    this.held = new Secret(token);
  }

  current(): Secret | undefined {
    this.calls.current += 1;
    this.onCurrent?.(this.calls.current);
    return this.held;
  }

  waitForToken(_deadline: number, _signal?: AbortSignal): Promise<void> {
    this.calls.waitForToken += 1;
    return Promise.resolve();
  }

  shouldRenewAfterRejection(rejected: Secret): boolean {
    this.calls.shouldRenewAfterRejection.push(rejected.reveal());
    return this.renewWorthIt;
  }

  async renewAfterRejection(rejected: Secret): Promise<void> {
    this.calls.renewAfterRejection.push(rejected.reveal());
    // A renewal is a token request: its result comes later, never in the same tick.
    await new Promise<void>((r) => setImmediate(r));
    if (this.next) this.held = this.next;
  }

  accepted(token: Secret): void {
    this.calls.accepted.push(token.reveal());
  }

  /**
   * The handler's dependency type is the `TokenManager` class, whose `#private` fields make it
   * nominal: a structural fake has to be cast. Only the methods above are called by the handler.
   */
  asTokenManager(): TokenManager {
    return this as unknown as TokenManager;
  }
}

/* ------------------------------------------------------------------ pacer */

/**
 * A pacer that grants at once (or when the test says, with `hold`), records every grant and
 * every `onWire()` (a granted start given back or on the wire), and every pause.
 */
export class FakePacer implements Pacer {
  acquires: AcquireOptions[] = [];
  granted = 0;
  onWireCalls = 0;
  pauses: number[] = [];
  waiting = 0;
  closed = false;
  /** When set, `acquire` waits for it after `ready` (a request queued for its slot). */
  hold: Deferred<void> | undefined;
  /** When set, `acquire` rejects with it (after `ready`). */
  failWith: unknown;

  async acquire(options: AcquireOptions): Promise<void> {
    this.acquires.push(options);
    this.waiting += 1;
    try {
      await options.ready?.(options.deadline, options.signal);
      if (this.hold) await this.hold.promise;
      if (this.failWith !== undefined) throw this.failWith;
      options.signal?.throwIfAborted();
      this.granted += 1;
    } finally {
      this.waiting -= 1;
    }
  }

  tryAcquireNow(): boolean {
    return false;
  }

  onWire(): boolean {
    this.onWireCalls += 1;
    return true;
  }

  pauseUntil(until: number): void {
    this.pauses.push(until);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/* ------------------------------------------------------- scripted upstream */

/** One request the scripted upstream received, and the means to answer it. */
export class UpstreamCall {
  /** The request body as received: `null` when none was sent, else every byte of it. */
  readonly body: Promise<Buffer | null>;
  /** The request body's shape: a kept Buffer, a stream, or none. */
  readonly bodyKind: 'none' | 'buffer' | 'stream';
  /** The abort callback undici hands over at connect was called (the attempt was cancelled). */
  aborted = false;
  connected = false;

  /** The request headers as they were at dispatch (undici copies them; so does this). */
  readonly headerList: string[];

  constructor(
    readonly options: Dispatcher.DispatchOptions,
    private readonly handler: Dispatcher.DispatchHandler,
  ) {
    this.headerList = [...(options.headers as string[])];
    const body = options.body;
    if (body === null || body === undefined) {
      this.bodyKind = 'none';
      this.body = Promise.resolve(null);
    } else if (Buffer.isBuffer(body)) {
      this.bodyKind = 'buffer';
      this.body = Promise.resolve(body);
    } else {
      this.bodyKind = 'stream';
      this.body = collect(body as Readable);
    }
  }

  /** The value of a request header (the flat list the forwarder sends), last one wins. */
  header(name: string): string | undefined {
    const list = this.headerList;
    let value: string | undefined;
    for (let i = 0; i < list.length; i += 2)
      if (list[i]?.toLowerCase() === name) value = list[i + 1];
    return value;
  }

  /** undici has a connection and is about to write: the forwarder's last check (`onWire`). */
  connect(): boolean {
    this.connected = true;
    try {
      this.handler.onConnect?.((_err?: Error) => {
        this.aborted = true;
      });
      return true;
    } catch (err) {
      // What undici does with a throw from onConnect: the attempt ends with onError.
      this.handler.onError?.(err as Error);
      return false;
    }
  }

  headers(status: number, headers: Record<string, string> = {}): void {
    const raw: Buffer[] = [];
    for (const [name, value] of Object.entries(headers))
      raw.push(Buffer.from(name), Buffer.from(value));
    this.handler.onHeaders?.(status, raw, () => {}, '');
  }

  data(chunk: string | Buffer): void {
    this.handler.onData?.(Buffer.from(chunk));
  }

  complete(): void {
    this.handler.onComplete?.([]);
  }

  error(err: Error): void {
    this.handler.onError?.(err);
  }

  /** Connects and answers in full. */
  respond(status: number, body = '', headers: Record<string, string> = {}): void {
    if (!this.connect()) return;
    this.headers(status, { 'content-length': String(Buffer.byteLength(body)), ...headers });
    if (body) this.data(body);
    this.complete();
  }
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}

/**
 * An upstream as an undici `Dispatcher`: every dispatch becomes an `UpstreamCall`, answered by
 * `answer` (by default 200 "ok" once its body has arrived).
 */
export class ScriptedUpstream {
  readonly calls: UpstreamCall[] = [];
  answer: (call: UpstreamCall, index: number) => void = (call) => {
    void call.body.then(() => call.respond(200, 'ok'));
  };

  readonly dispatcher = {
    dispatch: (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler) => {
      const call = new UpstreamCall(options, handler);
      this.calls.push(call);
      this.answer(call, this.calls.length - 1);
      return true;
    },
    close: async () => {},
    // Only `dispatch` and `close` are used by the forwarder; the rest of the Dispatcher class
    // (events, the request/stream helpers) would be dead weight here.
  } as unknown as Dispatcher;
}

/* ---------------------------------------------------- loopback HTTP pair */

/** A loopback server whose request listener is swapped per test. */
export interface Loopback {
  port: number;
  /** The listener of the next requests. */
  handle: (req: IncomingMessage, res: ServerResponse) => void;
  /** Every response object the server made, in order (to see what was or was not written). */
  responses: ServerResponse[];
  close(): Promise<void>;
}

export async function loopback(): Promise<Loopback> {
  const server = createServer();
  const lb: Loopback = {
    port: 0,
    handle: () => {},
    responses: [],
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
  server.on('request', (req, res) => {
    lb.responses.push(res);
    lb.handle(req, res);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  lb.port = (server.address() as AddressInfo).port;
  return lb;
}

/** What a client saw. */
export interface ClientResult {
  status: number | undefined;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  /** The response ended normally (not cut off). */
  complete: boolean;
}

export interface ClientRequest {
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  /** Written in this many pieces, in order; for a chunked body leave out `content-length`. */
  body?: Array<string | Buffer>;
  /** Leave the request open after the body (to write more, `end` or `abort` it later). */
  keepOpen?: boolean;
}

/**
 * Sends one request to the loopback port on its own connection. `result` settles when the
 * response ends or is cut off; `abort` destroys the client's side at any time.
 */
export function send(
  port: number,
  r: ClientRequest = {},
): {
  result: Promise<ClientResult>;
  abort(): void;
  write(piece: string | Buffer): void;
  end(): void;
} {
  const req = request({
    host: '127.0.0.1',
    port,
    method: r.method ?? 'GET',
    path: r.path ?? '/items',
    headers: r.headers ?? {},
    agent: false,
  });
  const result = new Promise<ClientResult>((resolve) => {
    const out: ClientResult = { status: undefined, headers: {}, body: '', complete: false };
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      resolve(out);
    };
    req.on('error', finish);
    req.on('close', () => {
      if (out.status === undefined) finish();
    });
    req.on('response', (res) => {
      out.status = res.statusCode;
      out.headers = res.headers;
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        out.body += chunk;
      });
      res.on('end', () => {
        out.complete = res.complete;
        finish();
      });
      res.on('error', finish);
      res.on('close', finish);
    });
  });
  for (const piece of r.body ?? []) req.write(piece);
  if (!r.keepOpen) req.end();
  else req.flushHeaders();
  return {
    result,
    abort: () => req.destroy(),
    write: (piece) => req.write(piece),
    end: () => req.end(),
  };
}
