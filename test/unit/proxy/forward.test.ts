import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import { Cancellation } from '../../../src/proxy/cancellation.js';
import { type Attempt, Forwarder, type Outgoing } from '../../../src/proxy/forward.js';
import { requestHead, withBearer } from '../../../src/proxy/headers.js';
import {
  answerOf,
  type Deferred,
  deferred,
  type Loopback,
  loopback,
  send,
  until,
} from '../fakes.js';

/**
 * The forwarder on real sockets: a client → a loopback server whose listener is the forwarder
 * → a real loopback upstream through undici's `Pool`. Real time: nothing here waits for a timer
 * (the timeout classes are in test/unit/proxy/forward-timeout.test.ts, in fake time).
 */

/** What the upstream saw of one request. */
interface Seen {
  method: string | undefined;
  headers: IncomingMessage['headers'];
  url: string | undefined;
  /** The body's pieces as they arrived. */
  received: string[];
  body: Buffer;
  /** The request was cut before the upstream answered it. */
  aborted: boolean;
}

let proxy: Loopback;
let upstream: Server;
let upstreamPort: number;
/** The upstream's behaviour for the current test; `seen` collects what it received. */
let answer: (req: IncomingMessage, res: ServerResponse) => void;
let seen: Seen[] = [];
let forwarder: Forwarder | undefined;

/** The one place that knows how a `Forwarder` is built. */
function makeForwarder(port = upstreamPort): Forwarder {
  forwarder = new Forwarder({
    config: { url: `http://127.0.0.1:${port}/api`, timeout: 30_000 },
    clock: systemClock,
  });
  return forwarder;
}

/** How one `send` ended, with the client's response object as the forwarder left it. */
interface Outcome {
  attempt?: Attempt;
  error?: unknown;
  res: ServerResponse;
  /** Whether the forwarder had begun the client's response when `send` settled. */
  headersSent: boolean;
  /** Whether the forwarder had ended it. */
  ended: boolean;
  onWireCalls: number;
}

/**
 * Routes the proxy's next request through `fwd.send`, with the body the test picks (`'stream'`:
 * the client's request itself, `null`: none) and `out` overrides; resolves how `send` ended.
 */
function through(
  fwd: Forwarder,
  options: {
    body?: 'stream' | null;
    out?: Partial<Outgoing>;
    cancel?: Cancellation;
    onWire?: () => boolean;
  } = {},
): { outcome: Promise<Outcome>; started: Deferred<void> } {
  const done = deferred<Outcome>();
  const started = deferred();
  proxy.handle = (req, res) => {
    const head = requestHead(req.rawHeaders);
    withBearer(head.headers, 'token-A');
    let onWireCalls = 0;
    const out: Outgoing = {
      method: req.method ?? 'GET',
      path: `/api${req.url ?? '/'}`,
      headers: head.headers,
      body: options.body === 'stream' ? req : null,
      replayOn401: undefined,
      onWire: () => {
        onWireCalls += 1;
        return options.onWire?.() ?? true;
      },
      ...options.out,
    };
    if (options.body !== 'stream') req.resume();
    started.resolve();
    fwd.send(out, res, options.cancel ?? new Cancellation()).then(
      (attempt) =>
        done.resolve({
          attempt,
          res,
          headersSent: res.headersSent,
          ended: res.writableEnded,
          onWireCalls,
        }),
      (error: unknown) => {
        done.resolve({
          error,
          res,
          headersSent: res.headersSent,
          ended: res.writableEnded,
          onWireCalls,
        });
        if (!res.headersSent) res.writeHead(599).end();
        else res.destroy();
      },
    );
  };
  return { outcome: done.promise, started };
}

beforeAll(async () => {
  proxy = await loopback();
  upstream = createServer((req, res) => {
    const entry: Seen = {
      method: req.method,
      url: req.url,
      received: [],
      headers: req.headers,
      body: Buffer.alloc(0),
      aborted: false,
    };
    seen.push(entry);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      chunks.push(c);
      entry.received.push(c.toString());
    });
    req.on('end', () => {
      entry.body = Buffer.concat(chunks);
    });
    res.on('close', () => {
      if (!res.writableFinished) entry.aborted = true;
    });
    answer(req, res);
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  upstreamPort = (upstream.address() as AddressInfo).port;
});
afterAll(async () => {
  await proxy.close();
  upstream.closeAllConnections();
  await new Promise((r) => upstream.close(r));
});
afterEach(async () => {
  seen = [];
  await forwarder?.close();
  forwarder = undefined;
});

/** The upstream answers once the whole request body has arrived. */
const afterBody =
  (status: number, body: string, headers: Record<string, string> = {}) =>
  (req: IncomingMessage, res: ServerResponse) =>
    req.on('end', () => res.writeHead(status, headers).end(body));

describe('Forwarder on real sockets', () => {
  it('streams a chunked request body up and the response down, as they come', async () => {
    answer = afterBody(201, 'created', { 'x-upstream': 'yes' });
    const fwd = makeForwarder();
    const { outcome } = through(fwd, { body: 'stream' });
    const client = send(proxy.port, {
      method: 'POST',
      path: '/items?x=1',
      headers: { 'transfer-encoding': 'chunked', 'content-type': 'text/plain' },
      body: ['one,'],
      keepOpen: true,
    });
    // The first piece is upstream while the client has not sent the rest: nothing is buffered.
    await until(() => seen[0]?.received.join('') === 'one,', 'the first piece upstream');
    client.write('two,');
    await until(() => seen[0]?.received.join('') === 'one,two,', 'the second piece upstream');
    client.write('three');
    client.end();
    const r = await client.result;
    const o = await outcome;
    expect(o.attempt).toMatchObject({ status: 201, delivered: true });
    expect(o.onWireCalls).toBe(1);
    expect(r).toMatchObject({ status: 201, body: 'created', complete: true });
    expect(r.headers['x-upstream']).toBe('yes');
    expect(seen).toHaveLength(1);
    expect(seen[0]?.body.toString()).toBe('one,two,three');
    expect(seen[0]?.headers['transfer-encoding']).toBe('chunked');
    expect(seen[0]?.headers.authorization).toBe('Bearer token-A');
    expect(seen[0]?.url).toBe('/api/items?x=1');
  });

  it('sends a request without a body as such, and the upstream does not wait for one', async () => {
    answer = afterBody(200, 'ok');
    const fwd = makeForwarder();
    const { outcome } = through(fwd, { body: null });
    const r = await send(proxy.port, { method: 'POST', headers: { 'content-length': '0' } }).result;
    expect(r.status).toBe(200);
    expect((await outcome).attempt?.status).toBe(200);
    expect(seen[0]?.body.length).toBe(0);
    expect(seen[0]?.headers['transfer-encoding']).toBeUndefined();
  });

  it('a cancellation while the upstream call is in flight aborts it and rejects with its reason; the response is untouched', async () => {
    answer = () => {}; // holds the request
    const fwd = makeForwarder();
    const cancel = new Cancellation();
    const { outcome } = through(fwd, { cancel });
    const client = send(proxy.port);
    await until(() => seen.length === 1, 'the upstream to receive the request');
    const reason = new Error('client gone');
    cancel.cancel(reason);
    const o = await outcome;
    expect(o.error).toBe(reason);
    expect(o.headersSent).toBe(false);
    expect(o.onWireCalls).toBe(1);
    await until(() => seen[0]?.aborted === true, 'the upstream to see the request cut');
    await client.result;
  });

  it('an upstream that resets after the headers: rejects, and leaves the begun response unended', async () => {
    answer = (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('partial');
      setImmediate(() => res.socket?.destroy());
    };
    const fwd = makeForwarder();
    const { outcome } = through(fwd);
    const client = send(proxy.port);
    const o = await outcome;
    expect(o.error).toBeDefined();
    expect(o.attempt).toBeUndefined();
    expect(o.headersSent).toBe(true);
    expect(o.ended).toBe(false);
    // Not an "unreachable": the upstream answered, and nothing can replace that answer now.
    expect(answerOf(o.error).code).not.toBe('upstream_unreachable');
    expect((await client.result).complete).toBe(false);
  });

  it('a refused connection is upstream_unreachable, and the start is still given back to the pacer once', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const fwd = makeForwarder(port);
    const { outcome } = through(fwd);
    await send(proxy.port).result;
    const o = await outcome;
    expect(answerOf(o.error).code).toBe('upstream_unreachable');
    expect(o.onWireCalls).toBe(1);
    expect(o.headersSent).toBe(false);
  });

  it('a 401 that will be replayed is discarded: nothing reaches the client, and the connection serves the replay', async () => {
    answer = afterBody(401, 'expired token', { 'www-authenticate': 'Bearer' });
    const fwd = makeForwarder();
    const first = through(fwd, { out: { replayOn401: () => true } });
    const client = send(proxy.port);
    const o = await first.outcome;
    expect(o.attempt).toMatchObject({ status: 401, delivered: false });
    expect(o.headersSent).toBe(false);
    o.res.writeHead(204).end(); // what the handler's replay would deliver instead
    expect((await client.result).status).toBe(204);
    answer = afterBody(200, 'fresh');
    const second = through(fwd);
    expect((await send(proxy.port).result).body).toBe('fresh');
    expect((await second.outcome).attempt?.status).toBe(200);
    // A 401 nobody will replay goes to the client as it came.
    answer = afterBody(401, 'refused');
    through(fwd, { out: { replayOn401: () => false } });
    expect(await send(proxy.port).result).toMatchObject({ status: 401, body: 'refused' });
  });

  it('a start that comes too late for its slot is not written, and the connection stays usable', async () => {
    answer = afterBody(200, 'ok');
    const fwd = makeForwarder();
    const late = through(fwd, { onWire: () => false });
    await send(proxy.port).result;
    const o = await late.outcome;
    expect(o.error).toBeDefined();
    expect(o.onWireCalls).toBe(1);
    expect(seen).toHaveLength(0);
    through(fwd);
    expect((await send(proxy.port).result).status).toBe(200);
    expect(seen).toHaveLength(1);
  });
});
