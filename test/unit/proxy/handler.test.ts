import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import type { Config, RouteConfig } from '../../../src/config/config.js';
import { Secret } from '../../../src/credentials/secret.js';
import { Forwarder } from '../../../src/proxy/forward.js';
import { ProxyHandler } from '../../../src/proxy/handler.js';
import {
  deferred,
  events,
  FakePacer,
  FakeTokens,
  type Loopback,
  loopback,
  memoryLogger,
  rejections,
  routeMetrics,
  ScriptedUpstream,
  send,
  settle,
  until,
  useFakeTime,
} from '../fakes.js';

/**
 * The proxy port's handler on a real loopback socket pair, with the real forwarder over a
 * scripted upstream (an undici dispatcher), a fake token manager, a fake pacer and fake time.
 */

const UPSTREAM_TIMEOUT_MS = 30_000;
const RATE_LIMIT: RouteConfig['rateLimit'] = {
  perSecond: 6,
  burst: 1,
  window: { max: 2000, length: 300_000 },
  queue: { max: 1000, timeout: 30_000 },
};
const LIMITS: Config['limits'] = {
  connections: 1024,
  headersTimeout: 10_000,
  bodyTimeout: 10_000,
  replayBytes: 16 * 1024 * 1024,
};

let server: Loopback;

/** The one place that knows how a `ProxyHandler` is built. */
function makeHandler() {
  const tokens = new FakeTokens('token-A');
  const pacer = new FakePacer();
  const upstream = new ScriptedUpstream();
  const { metrics, route } = routeMetrics();
  const log = memoryLogger();
  const replay = { held: 0 };
  const upstreamConfig = { url: 'http://upstream.test/api', timeout: UPSTREAM_TIMEOUT_MS };
  const handler = new ProxyHandler({
    config: { upstream: upstreamConfig, rateLimit: RATE_LIMIT },
    limits: LIMITS,
    replay,
    tokens: tokens.asTokenManager(),
    pacer,
    forwarder: new Forwarder({
      config: upstreamConfig,
      clock: systemClock,
      dispatcher: upstream.dispatcher,
    }),
    metrics: route,
    logger: log.logger,
    clock: systemClock,
  });
  server.handle = handler.handle;
  server.responses.length = 0;
  return { handler, tokens, pacer, upstream, metrics, log, replay };
}

/**
 * A POST that declares 100 bytes, sends 10 and stays open: resolves once the handler is reading
 * it (the replay budget holds the declared length).
 */
async function sendStalledBody(
  t: ReturnType<typeof makeHandler>,
): Promise<ReturnType<typeof send>> {
  const c = send(server.port, {
    method: 'POST',
    headers: { 'content-length': '100' },
    body: ['0123456789'],
    keepOpen: true,
  });
  await until(() => t.replay.held === 100, 'the body read to begin');
  return c;
}

const errorCode = (body: string): unknown => (JSON.parse(body) as { error?: unknown }).error;

beforeAll(async () => {
  server = await loopback();
});
afterAll(async () => {
  await server.close();
});
beforeEach(() => {
  // Whole seconds, so that an HTTP-date Retry-After converts without rounding.
  useFakeTime(1_800_000_000_000);
});
afterEach(() => {
  vi.useRealTimers();
});

describe('ProxyHandler: a 401 and its replay', () => {
  it('replays a kept body once, with the renewed token, through the pacer again', async () => {
    const t = makeHandler();
    t.tokens.next = new Secret('token-B');
    t.upstream.answer = (call, i) => call.respond(i === 0 ? 401 : 200, i === 0 ? 'no' : 'fresh');
    const r = await send(server.port, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': '9' },
      body: ['{"a":123}'],
    }).result;
    expect(r.status).toBe(200);
    expect(r.body).toBe('fresh');
    expect(t.upstream.calls.map((c) => c.header('authorization'))).toEqual([
      'Bearer token-A',
      'Bearer token-B',
    ]);
    expect((await t.upstream.calls[1]?.body)?.toString()).toBe('{"a":123}');
    expect(t.tokens.calls.renewAfterRejection).toEqual(['token-A']);
    // The replay is paced like any start, and both starts were given back to the pacer.
    expect(t.pacer.granted).toBe(2);
    expect(t.pacer.onWireCalls).toBe(2);
    expect(t.replay.held).toBe(0);
  });
});

describe('ProxyHandler: upstream pushback', () => {
  it.each([503, 429])(
    'a %i with Retry-After in seconds pauses the pacer and goes back unchanged',
    async (status) => {
      const t = makeHandler();
      const now = Date.now();
      t.upstream.answer = (call) => call.respond(status, 'busy', { 'retry-after': '7' });
      const r = await send(server.port).result;
      expect(r.status).toBe(status);
      expect(r.body).toBe('busy');
      expect(r.headers['retry-after']).toBe('7');
      expect(r.headers['x-m2m-proxy-error']).toBeUndefined();
      expect(t.pacer.pauses).toEqual([now + 7000]);
      expect(events(t.log.lines, 'upstream_pushback')).toHaveLength(1);
    },
  );

  it('a 503 with an HTTP-date Retry-After pauses the pacer until that date', async () => {
    const t = makeHandler();
    const until = Date.now() + 12_000;
    t.upstream.answer = (call) =>
      call.respond(503, '', { 'retry-after': new Date(until).toUTCString() });
    const r = await send(server.port).result;
    expect(r.status).toBe(503);
    expect(t.pacer.pauses).toEqual([until]);
  });

  it('a 500 with Retry-After, or a 503 without one, pauses nothing', async () => {
    const t = makeHandler();
    t.upstream.answer = (call, i) =>
      i === 0 ? call.respond(500, '', { 'retry-after': '7' }) : call.respond(503, '');
    expect((await send(server.port).result).status).toBe(500);
    expect((await send(server.port).result).status).toBe(503);
    expect(t.pacer.pauses).toEqual([]);
  });
});

describe('ProxyHandler: the token is lost after the slot', () => {
  it('answers 503 token_unavailable, gives the slot back and sends nothing upstream', async () => {
    const t = makeHandler();
    t.pacer.hold = deferred();
    const c = send(server.port, {
      method: 'POST',
      headers: { 'content-length': '5' },
      body: ['hello'],
    });
    await until(() => t.pacer.acquires.length === 1, 'the request to queue for its slot');
    t.tokens.held = undefined; // it expired while the request waited for its slot
    t.pacer.hold.resolve();
    const r = await c.result;
    expect(r.status).toBe(503);
    expect(errorCode(r.body)).toBe('token_unavailable');
    expect(r.headers['x-m2m-proxy-error']).toBe('token_unavailable');
    expect(t.pacer.granted).toBe(1);
    expect(t.pacer.onWireCalls).toBe(1); // the granted start is released, not left unconfirmed
    expect(t.upstream.calls).toHaveLength(0);
    expect(await rejections(t.metrics)).toEqual({ token_unavailable: 1 });
    expect(t.replay.held).toBe(0);
  });
});

describe('ProxyHandler: bodies', () => {
  it('streams a chunked body to the upstream as it comes, and does not replay it after a 401', async () => {
    const t = makeHandler();
    t.tokens.next = new Secret('token-B');
    t.upstream.answer = (call) => void call.body.then(() => call.respond(401, 'refused'));
    const r = await send(server.port, {
      method: 'PUT',
      headers: { 'transfer-encoding': 'chunked' },
      body: ['first,', 'second,', 'third'],
    }).result;
    expect(t.upstream.calls).toHaveLength(1);
    const call = t.upstream.calls[0];
    expect(call?.bodyKind).toBe('stream');
    expect((await call?.body)?.toString()).toBe('first,second,third');
    expect(call?.header('transfer-encoding')).toBeUndefined(); // hop-by-hop: undici frames it
    // Not replayable: the 401 goes back, and the token is still renewed in the background.
    expect(r.status).toBe(401);
    expect(r.body).toBe('refused');
    expect(t.tokens.calls.renewAfterRejection).toEqual(['token-A']);
    expect(t.replay.held).toBe(0);
  });

  it('sends a zero-length body as no body, and can therefore replay it after a 401', async () => {
    const t = makeHandler();
    t.tokens.next = new Secret('token-B');
    t.upstream.answer = (call, i) => call.respond(i === 0 ? 401 : 204);
    const r = await send(server.port, {
      method: 'POST',
      headers: { 'content-length': '0' },
    }).result;
    expect(r.status).toBe(204);
    expect(t.upstream.calls.map((c) => c.bodyKind)).toEqual(['none', 'none']);
    expect(t.upstream.calls[0]?.header('content-length')).toBe('0');
    expect(t.upstream.calls[1]?.header('authorization')).toBe('Bearer token-B');
  });
});

describe('ProxyHandler: the client leaves', () => {
  it('during the body read: nothing is queued or sent, the replay budget is released, no answer is tried', async () => {
    const t = makeHandler();
    const c = await sendStalledBody(t);
    c.abort();
    await until(() => t.handler.inFlight === 0, 'the request to end');
    await c.result;
    expect(t.replay.held).toBe(0);
    expect(t.pacer.acquires).toHaveLength(0);
    expect(t.upstream.calls).toHaveLength(0);
    expect(server.responses[0]?.headersSent).toBe(false);
    expect(await rejections(t.metrics)).toEqual({});
    expect(events(t.log.lines, 'response_aborted')).toEqual([]);
    expect(events(t.log.lines, 'client_gone')).toHaveLength(1);
    // The body timer went with it: nothing fires later.
    expect(vi.getTimerCount()).toBe(0);
  });

  it('while the upstream call is in flight: the attempt is aborted, slot and budget released, no answer tried', async () => {
    const t = makeHandler();
    t.upstream.answer = (call) => call.connect(); // connected, never answers
    const c = send(server.port, {
      method: 'POST',
      headers: { 'content-length': '5' },
      body: ['hello'],
    });
    await until(() => t.upstream.calls[0]?.connected === true, 'the upstream call');
    expect(t.replay.held).toBe(5);
    c.abort();
    await until(() => t.handler.inFlight === 0, 'the request to end');
    expect(t.upstream.calls[0]?.aborted).toBe(true);
    expect(t.pacer.granted).toBe(1);
    expect(t.pacer.onWireCalls).toBe(1);
    expect(t.replay.held).toBe(0);
    expect(server.responses[0]?.headersSent).toBe(false);
    expect(await rejections(t.metrics)).toEqual({});
    expect(events(t.log.lines, 'response_aborted')).toEqual([]);
    // The upstream timeout was cleared: advancing past it sends and logs nothing more.
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(UPSTREAM_TIMEOUT_MS);
    expect(t.upstream.calls).toHaveLength(1);
  });

  it('while queued for its slot: it leaves the queue and is never sent', async () => {
    const t = makeHandler();
    t.pacer.hold = deferred();
    const c = send(server.port);
    await until(() => t.pacer.acquires.length === 1, 'the request to queue');
    c.abort();
    await until(() => t.pacer.acquires[0]?.signal?.aborted === true, 'the queue to be told');
    t.pacer.hold.resolve();
    await until(() => t.handler.inFlight === 0, 'the request to end');
    expect(t.upstream.calls).toHaveLength(0);
    expect(t.pacer.granted).toBe(0);
    expect(await rejections(t.metrics)).toEqual({});
  });
});

describe('ProxyHandler: a slow body and a failing pacer', () => {
  it('answers 408 request_timeout to a kept body that does not arrive within limits.bodyTimeout', async () => {
    const t = makeHandler();
    const c = await sendStalledBody(t);
    await vi.advanceTimersByTimeAsync(LIMITS.bodyTimeout - 1);
    expect(server.responses[0]?.headersSent).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    const r = await c.result;
    expect(r.status).toBe(408);
    expect(errorCode(r.body)).toBe('request_timeout');
    expect(r.headers['x-m2m-proxy-error']).toBe('request_timeout');
    await until(() => t.handler.inFlight === 0, 'the request to end');
    expect(t.replay.held).toBe(0);
    expect(t.pacer.acquires).toHaveLength(0);
    expect(t.upstream.calls).toHaveLength(0);
    expect(await rejections(t.metrics)).toEqual({ request_timeout: 1 });
  });

  it('a pacer that fails with an error of its own (a broken slot store): 500 internal_error at once, counted and logged, nothing is sent or held', async () => {
    const t = makeHandler();
    t.pacer.failWith = new Error('slot store broke');
    const r = await send(server.port, {
      method: 'POST',
      headers: { 'content-length': '5' },
      body: ['hello'],
    }).result;
    // An answer that says it is the proxy's own, never a bare reset nor one that could pass for
    // the upstream's.
    expect(r.status).toBe(500);
    expect(errorCode(r.body)).toBe('internal_error');
    expect(r.headers['x-m2m-proxy-error']).toBe('internal_error');
    expect(await rejections(t.metrics)).toEqual({ internal_error: 1 });
    expect(events(t.log.lines, 'internal_error')).toHaveLength(1);
    expect(events(t.log.lines, 'response_aborted')).toEqual([]);
    await until(() => t.handler.inFlight === 0, 'the request to end');
    expect(t.upstream.calls).toHaveLength(0);
    expect(t.pacer.granted).toBe(0);
    expect(t.replay.held).toBe(0);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('ProxyHandler: a failure after the response began', () => {
  it('an upstream error after the headers cuts the client connection instead of ending the response', async () => {
    const t = makeHandler();
    t.upstream.answer = (call) => {
      call.connect();
      call.headers(200, { 'content-type': 'text/plain' });
      call.data('partial');
    };
    const c = send(server.port);
    await until(() => server.responses[0]?.headersSent === true, 'the response head');
    await settle(); // the head and the first bytes leave before undici reports the reset
    t.upstream.calls[0]?.error(
      Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }),
    );
    const r = await c.result;
    expect(r.status).toBe(200);
    expect(r.complete).toBe(false);
    expect(r.headers['x-m2m-proxy-error']).toBeUndefined();
    expect(events(t.log.lines, 'response_aborted')).toHaveLength(1);
    expect(await rejections(t.metrics)).toEqual({});
    await until(() => t.handler.inFlight === 0, 'the request to end');
  });

  it('the upstream timeout after the headers cuts the client connection too (no second head)', async () => {
    const t = makeHandler();
    t.upstream.answer = (call) => {
      call.connect();
      call.headers(200, { 'content-type': 'text/plain' });
      call.data('partial');
    };
    const c = send(server.port);
    await until(() => server.responses[0]?.headersSent === true, 'the response head');
    await settle();
    await vi.advanceTimersByTimeAsync(UPSTREAM_TIMEOUT_MS);
    const r = await c.result;
    expect(r.status).toBe(200);
    expect(r.complete).toBe(false);
    expect(t.upstream.calls[0]?.aborted).toBe(true);
    expect(events(t.log.lines, 'response_aborted')).toMatchObject([{ code: 'upstream_timeout' }]);
    await until(() => t.handler.inFlight === 0, 'the request to end');
  });
});

describe('ProxyHandler: drain', () => {
  it('waits for requests in flight until its timeout, says how many were left, and refuses new ones', async () => {
    const t = makeHandler();
    t.upstream.answer = (call) => call.connect(); // never answers within the drain
    const c = send(server.port);
    await until(() => t.upstream.calls.length === 1, 'the upstream call');
    let left: number | undefined;
    void t.handler.drain(5000).then((n) => {
      left = n;
    });
    await vi.advanceTimersByTimeAsync(4999);
    expect(left).toBeUndefined();
    const late = await send(server.port).result;
    expect(late.status).toBe(503);
    expect(errorCode(late.body)).toBe('shutting_down');
    expect(late.headers['x-m2m-proxy-error']).toBe('shutting_down');
    expect(t.upstream.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(left).toBe(1);
    c.abort();
    await until(() => t.handler.inFlight === 0, 'the request to end');
  });

  it('resolves as soon as the last request in flight is answered, before its timeout', async () => {
    const t = makeHandler();
    t.upstream.answer = (call) => call.connect();
    const c = send(server.port);
    await until(() => t.upstream.calls.length === 1, 'the upstream call');
    let left: number | undefined;
    void t.handler.drain(5000).then((n) => {
      left = n;
    });
    t.upstream.calls[0]?.headers(200, { 'content-length': '2' });
    t.upstream.calls[0]?.data('ok');
    t.upstream.calls[0]?.complete();
    expect((await c.result).status).toBe(200);
    await until(() => left !== undefined, 'the drain to end');
    expect(left).toBe(0);
    expect(vi.getTimerCount()).toBe(0); // its timer is cleared
  });

  it('with nothing in flight, resolves at once with 0', async () => {
    const t = makeHandler();
    await expect(t.handler.drain(5000)).resolves.toBe(0);
    expect(t.handler.shuttingDown).toBe(true);
  });
});
