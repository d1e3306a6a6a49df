import { request } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../fixtures/process.js';
import { type AuthMethod, CLIENT_ID, startWorld, type World } from './world.js';

/** Sends raw bytes and returns the raw response: for request lines no HTTP client would send. */
function raw(url: string, request: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => socket.end(request));
    let data = '';
    socket.on('data', (d) => {
      data += d.toString();
    });
    socket.on('end', () => resolve(data));
    socket.on('error', reject);
  });
}

describe.each<AuthMethod>(['client_secret_basic', 'client_secret_post', 'private_key_jwt'])(
  'with %s',
  (method) => {
    let world: World;
    beforeAll(async () => {
      world = await startWorld({ method });
    });
    afterAll(() => world?.close());

    it('injects a token the upstream verifies', async () => {
      const res = await fetch(`${world.proxy.url}/echo/hello?x=1`);
      expect(res.status).toBe(200);
      const body = (await res.json()) as { path: string; query: string; client_id: string };
      expect(body).toMatchObject({
        path: '/api/v1/echo/hello',
        query: 'x=1',
        client_id: CLIENT_ID,
      });
      expect(world.api.requests.at(-1)?.auth).toBe('ok');
      expect(world.idp.tokenLog.map((r) => r.authMethod)).toEqual([method]);
    });
  },
);

describe('forwarding', () => {
  let world: World;
  beforeAll(async () => {
    world = await startWorld();
  });
  afterAll(() => world?.close());

  it('makes exactly one token request for 50 concurrent cold-start requests', async () => {
    const cold = await startWorld();
    try {
      const responses = await Promise.all(
        Array.from({ length: 50 }, (_, i) => fetch(`${cold.proxy.url}/echo/${i}`)),
      );
      expect(responses.map((r) => r.status)).toEqual(Array(50).fill(200));
      expect(cold.idp.tokenRequests).toBe(1);
      expect(new Set(cold.api.requests.map((r) => r.claims?.jti)).size).toBe(1);
    } finally {
      await cold.close();
    }
  });

  it("replaces the client's credentials, drops hop-by-hop headers and sets the upstream's Host", async () => {
    // node:http, not fetch: fetch refuses to send a Connection header.
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(`${world.proxy.url}/echo/headers`, {
        headers: {
          authorization: 'Basic c29tZW9uZTplbHNl',
          'proxy-authorization': 'Basic eDp5',
          connection: 'keep-alive, x-hop',
          'x-hop': 'must not pass',
          'x-request-id': 'req-1',
          cookie: 'session=abc',
        },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(200);
    const seen = world.api.requests.at(-1);
    expect(seen?.auth).toBe('ok');
    expect(seen?.headers.host).toBe(world.api.host);
    expect(seen?.headers['x-request-id']).toBe('req-1');
    expect(seen?.headers.cookie).toBe('session=abc');
    expect(seen?.headers['proxy-authorization']).toBeUndefined();
    expect(seen?.headers['x-hop']).toBeUndefined();
    expect(seen?.headers.authorization).toMatch(/^Bearer ey/);
  });

  it('passes method, body and status through unchanged', async () => {
    const res = await fetch(`${world.proxy.url}/upload`, { method: 'PUT', body: 'hello world' });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ bytes: 11 });
    const teapot = await fetch(`${world.proxy.url}/status/418`);
    expect(teapot.status).toBe(418);
    expect(teapot.headers.get('x-m2m-proxy-error')).toBeNull();
    const forbidden = await fetch(`${world.proxy.url}/status/403`);
    expect(forbidden.status).toBe(403);
    const metrics = await (await fetch(`${world.proxy.adminUrl}/metrics`)).text();
    expect(metrics).toMatch(/m2m_proxy_upstream_responses_total\{route="default",code="403"\} 1/);
    expect(metrics).toMatch(/m2m_proxy_upstream_responses_total\{route="default",code="418"\} 1/);
  });

  it.each([
    ['an absolute-form target', 'GET http://127.0.0.1:1/echo/x HTTP/1.1'],
    ['a path climbing above the prefix', 'GET /../secret HTTP/1.1'],
    ['an encoded climb', 'GET /echo/%2e%2e/%2E%2E/secret HTTP/1.1'],
    ['an encoded separator', 'GET /echo/..%2f..%2fsecret HTTP/1.1'],
    ['an authority-form target', 'CONNECT evil.example:443 HTTP/1.1'],
  ])('refuses %s with 400 and sends nothing upstream', async (_, line) => {
    const before = world.api.requests.length;
    const response = await raw(
      world.proxy.url,
      `${line}\r\nHost: localhost\r\nConnection: close\r\n\r\n`,
    );
    expect(response).toMatch(/^HTTP\/1\.1 400 /);
    expect(response.toLowerCase()).toContain('x-m2m-proxy-error: bad_request');
    expect(response).toContain('"error":"bad_request"');
    expect(world.api.requests.length).toBe(before);
  });

  it('answers malformed HTTP with 400 bad_request', async () => {
    const response = await raw(world.proxy.url, 'THIS IS NOT HTTP\r\n\r\n');
    expect(response).toMatch(/^HTTP\/1\.1 400 /);
    expect(response.toLowerCase()).toContain('x-m2m-proxy-error: bad_request');
  });

  it('renews once and retries once when the upstream answers 401', async () => {
    const tokensBefore = world.idp.tokenRequests;
    world.api.revokeSeenTokens();
    const responses = await Promise.all(
      Array.from({ length: 10 }, () =>
        fetch(`${world.proxy.url}/upload`, { method: 'POST', body: 'x'.repeat(1000) }),
      ),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(10).fill(200));
    expect(world.idp.tokenRequests).toBe(tokensBefore + 1);
    // A streamed body too large to keep cannot be replayed: its 401 goes back to the client.
    world.api.revokeSeenTokens();
    const big = await fetch(`${world.proxy.url}/upload`, {
      method: 'POST',
      body: 'y'.repeat(200_000),
    });
    expect(big.status).toBe(401);
  });

  it('does not turn a persistent 401 into a token request per request', async () => {
    // retry.min 60 s: the eight requests fall inside the first backoff however slow the machine
    // (the backoff's timing itself is tested in fake time in token-manager.test.ts).
    const fresh = await startWorld({ proxy: { token: { retry: { min: '60s', max: '120s' } } } });
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 8; i++)
        statuses.push((await fetch(`${fresh.proxy.url}/status/401`)).status);
      expect(statuses).toEqual(Array(8).fill(401));
      // The first 401 renews at once; a fresh token rejected again backs off from retry.min.
      expect(fresh.idp.tokenRequests).toBe(2);
    } finally {
      await fresh.close();
    }
  });

  it('answers 502 upstream_unreachable when the upstream is down', async () => {
    const down = await startWorld({
      proxy: { upstream: { url: `http://127.0.0.1:${await freePort()}/api` } },
    });
    try {
      const res = await fetch(`${down.proxy.url}/echo/x`);
      expect(res.status).toBe(502);
      expect(res.headers.get('x-m2m-proxy-error')).toBe('upstream_unreachable');
      expect(await res.json()).toMatchObject({ error: 'upstream_unreachable' });
    } finally {
      await down.close();
    }
  });

  it('answers 504 upstream_timeout when the upstream is too slow', async () => {
    const slow = await startWorld({ proxy: { upstream: { timeout: '300ms' } } });
    try {
      const started = Date.now();
      const res = await fetch(`${slow.proxy.url}/slow?ms=3000`);
      expect(res.status).toBe(504);
      expect(res.headers.get('x-m2m-proxy-error')).toBe('upstream_timeout');
      expect(Date.now() - started).toBeLessThan(2500);
      const metrics = await (await fetch(`${slow.proxy.adminUrl}/metrics`)).text();
      expect(metrics).toMatch(
        /m2m_proxy_requests_rejected_total\{route="default",reason="upstream_timeout"\} 1/,
      );
    } finally {
      await slow.close();
    }
  });
});
