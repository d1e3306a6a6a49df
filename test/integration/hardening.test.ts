import { readdirSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorld, type World } from './world.js';

/** Open file descriptors of a process (Linux). */
const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every 50 ms until it returns true or `ms` pass; returns the last result. */
async function eventually(check: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > until) return false;
    await sleep(50);
  }
}

/**
 * A raw client that keeps its half of the connection open after the server ends its own (as a
 * hostile or broken client would). `answered` resolves with what it received once the server's
 * side has ended; `closed` when the connection is gone altogether.
 */
function halfOpenClient(url: string, bytes: string) {
  const { hostname, port } = new URL(url);
  const socket = connect({ port: Number(port), host: hostname, allowHalfOpen: true });
  let data = '';
  socket.on('data', (d) => {
    data += d.toString();
  });
  socket.on('error', () => {});
  socket.write(bytes);
  const answered = new Promise<string>((resolve) => {
    socket.once('end', () => resolve(data));
    socket.once('close', () => resolve(data));
  });
  return { socket, answered };
}

/** Sends `bytes` (possibly in several writes) and resolves with everything read until the server closes. */
function exchange(url: string, ...writes: string[]): { socket: Socket; response: Promise<string> } {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  let data = '';
  socket.on('data', (d) => {
    data += d.toString();
  });
  const response = new Promise<string>((resolve, reject) => {
    socket.once('close', () => resolve(data));
    socket.once('error', reject);
  });
  for (const w of writes) socket.write(w);
  return { socket, response };
}

const metricsOf = async (world: World) => (await fetch(`${world.proxy.adminUrl}/metrics`)).text();

describe('hostile clients', () => {
  let world: World;
  beforeAll(async () => {
    world = await startWorld({
      proxy: {
        limits: { headersTimeout: '1s', bodyTimeout: '1s', replayBytes: 150_000 },
        token: { retry: { min: '30s', max: '60s' } },
      },
    });
    // The first token, and the process settled, before descriptors are counted.
    expect((await fetch(`${world.proxy.url}/echo/warm`)).status).toBe(200);
  });
  afterAll(() => world?.close());

  it('releases the sockets of half-open clients once answered, and /healthz answers throughout', async () => {
    const pid = world.proxy.pid;
    const before = fds(pid);
    const attacks = [
      'NOT HTTP AT ALL\r\n\r\n', // malformed: clientError
      'CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example\r\n\r\n',
      'GET /echo/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
      'TRACE /echo/x HTTP/1.1\r\nHost: x\r\n\r\n', // answered by the handler
      'GET /../admin HTTP/1.1\r\nHost: x\r\n\r\n',
    ];
    const clients = Array.from({ length: 200 }, (_, i) =>
      halfOpenClient(world.proxy.url, attacks[i % attacks.length] as string),
    );
    const health = (async () => {
      const statuses: number[] = [];
      for (let i = 0; i < 10; i++) {
        statuses.push((await fetch(`${world.proxy.adminUrl}/healthz`)).status);
        await sleep(20);
      }
      return statuses;
    })();
    const answers = await Promise.all(clients.map((c) => c.answered));
    for (const answer of answers) expect(answer).toMatch(/^HTTP\/1\.1 4\d\d /);
    // Every client still holds its socket open: only the proxy can have released its side.
    expect(clients.every((c) => !c.socket.destroyed)).toBe(true);
    const released = await eventually(() => fds(pid) <= before + 2, 1000);
    expect({ released, before, after: fds(pid) }).toMatchObject({ released: true });
    expect(await health).toEqual(Array(10).fill(200));
    for (const c of clients) c.socket.destroy();
  });

  it('answers 408 request_timeout to a client too slow with its headers, and releases it', async () => {
    const started = Date.now();
    const { response } = exchange(world.proxy.url, 'GET /echo/slow HTTP/1.1\r\nHost: x\r\n');
    const text = await response;
    expect(text).toMatch(/^HTTP\/1\.1 408 /);
    expect(text.toLowerCase()).toContain('x-m2m-proxy-error: request_timeout');
    expect(text).toContain('"error":"request_timeout"');
    // headersTimeout 1 s, checked once a second: well before Node's 60 s default.
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('answers 408 request_timeout to a client too slow with a body it declared', async () => {
    const before = world.api.requests.length;
    const { response } = exchange(
      world.proxy.url,
      'POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello',
    );
    const text = await response;
    expect(text).toMatch(/^HTTP\/1\.1 408 /);
    expect(text).toContain('"error":"request_timeout"');
    expect(world.api.requests.length).toBe(before);
    expect(await metricsOf(world)).toMatch(
      /^m2m_proxy_requests_rejected_total\{route="default",reason="request_timeout"\} [2-9]/m,
    );
  });

  it('refuses TRACE with 405 method_not_allowed and sends nothing upstream', async () => {
    const before = world.api.requests.length;
    const { response } = exchange(
      world.proxy.url,
      'TRACE /echo/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    const text = await response;
    expect(text).toMatch(/^HTTP\/1\.1 405 /);
    expect(text.toLowerCase()).toContain('x-m2m-proxy-error: method_not_allowed');
    expect(world.api.requests.length).toBe(before);
    // Node's parser does not know TRACK: it never reaches the upstream either.
    const track = await exchange(world.proxy.url, 'TRACK /echo/x HTTP/1.1\r\nHost: x\r\n\r\n')
      .response;
    expect(track).toMatch(/^HTTP\/1\.1 4(00|05) /);
    expect(world.api.requests.length).toBe(before);
  });

  it.each([
    'GET /..;/admin HTTP/1.1',
    'GET /echo/..;jsessionid=1/..;/admin HTTP/1.1',
    'GET /echo/%2e%2e;/%2e%2e;/admin HTTP/1.1',
  ])('refuses %s (a climb to a servlet container) with 400', async (line) => {
    const before = world.api.requests.length;
    const text = await exchange(world.proxy.url, `${line}\r\nHost: x\r\nConnection: close\r\n\r\n`)
      .response;
    expect(text).toMatch(/^HTTP\/1\.1 400 /);
    expect(world.api.requests.length).toBe(before);
  });

  it("answers a pipelined request with the upstream's answer, then closes on the garbage after it", async () => {
    const before = world.api.requests.length;
    const { response } = exchange(
      world.proxy.url,
      'POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi' + 'GARBAGE GARBAGE\r\n\r\n',
    );
    const text = await response;
    expect(world.api.requests.length).toBe(before + 1);
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(text).toContain('"bytes":2');
    expect(text).not.toMatch(/HTTP\/1\.1 400 /);
  });

  it('refuses with 429 a body that would exceed the replay budget, before reading it', async () => {
    const head =
      'POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 60000\r\n\r\n';
    // Two 60 000-byte bodies fit in 150 000 bytes; the third does not.
    const first = exchange(world.proxy.url, head, 'a'.repeat(1000));
    const second = exchange(world.proxy.url, head, 'b'.repeat(1000));
    await sleep(300);
    const third = await exchange(world.proxy.url, head, 'c'.repeat(1000)).response;
    expect(third).toMatch(/^HTTP\/1\.1 429 /);
    expect(third).toContain('"error":"rate_limited"');
    expect(third.toLowerCase()).toContain('retry-after: 1');
    // The held ones complete normally, and release their share of the budget.
    first.socket.write('a'.repeat(59_000));
    second.socket.write('b'.repeat(59_000));
    expect(await first.response).toMatch(/^HTTP\/1\.1 200 /);
    expect(await second.response).toMatch(/^HTTP\/1\.1 200 /);
    const again = await fetch(`${world.proxy.url}/upload`, {
      method: 'POST',
      body: 'd'.repeat(60_000),
    });
    expect(again.status).toBe(200);
  });

  it('renews at once when a token that worked is revoked, however soon after an earlier 401', async () => {
    const tokens = world.idp.tokenRequests;
    world.api.revokeSeenTokens();
    expect((await fetch(`${world.proxy.url}/echo/a`)).status).toBe(200); // renewed and replayed
    expect(world.idp.tokenRequests).toBe(tokens + 1);
    expect((await fetch(`${world.proxy.url}/echo/b`)).status).toBe(200); // the new token works
    // Revoked again well within retry.min (30 s): it had worked, so it is renewed at once.
    world.api.revokeSeenTokens();
    expect((await fetch(`${world.proxy.url}/echo/c`)).status).toBe(200);
    expect(world.idp.tokenRequests).toBe(tokens + 2);
    // A streamed body cannot be replayed: its 401 goes back, but the token is renewed at once.
    world.api.revokeSeenTokens();
    const big = await fetch(`${world.proxy.url}/upload`, {
      method: 'POST',
      body: 'y'.repeat(200_000),
    });
    expect(big.status).toBe(401);
    await expect.poll(() => world.idp.tokenRequests, { timeout: 5000 }).toBe(tokens + 3);
    expect((await fetch(`${world.proxy.url}/echo/d`)).status).toBe(200);
    expect(world.idp.tokenRequests).toBe(tokens + 3);
  });
});

describe('metrics from the start', () => {
  let world: World;
  beforeAll(async () => {
    world = await startWorld();
  });
  afterAll(() => world?.close());

  it('exports build info and the fixed-label counters at 0 before anything happened', async () => {
    const text = await metricsOf(world);
    const version = (
      JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
        version: string;
      }
    ).version;
    expect(text).toContain(
      `m2m_proxy_build_info{version="${version}",node="${process.versions.node}"} 1`,
    );
    for (const reason of [
      'bad_request',
      'method_not_allowed',
      'request_timeout',
      'rate_limited',
      'upstream_unreachable',
      'token_unavailable',
      'shutting_down',
      'upstream_timeout',
    ]) {
      expect(text).toMatch(
        new RegExp(
          `^m2m_proxy_requests_rejected_total\\{route="default",reason="${reason}"\\} 0$`,
          'm',
        ),
      );
    }
    expect(text).toMatch(
      /^m2m_proxy_token_refreshes_total\{route="default",result="failure"\} 0$/m,
    );
  });
});

describe('a token endpoint that issues a malformed access_token', () => {
  let world: World;
  beforeAll(async () => {
    world = await startWorld({ ttl: 3 });
  });
  afterAll(() => world?.close());

  it('counts it as a failed renewal (invalid_response), never injects it, and is not ready', async () => {
    const ready = async () => (await fetch(`${world.proxy.adminUrl}/readyz`)).status === 200;
    expect(await eventually(ready, 5000)).toBe(true);
    world.idp.fail({
      status: 200,
      body: JSON.stringify({
        access_token: 'abc\r\nX-Injected: yes',
        token_type: 'Bearer',
        expires_in: 3600,
      }),
    });
    // The good token (3 s) expires; every renewal since got the malformed one.
    const notReady = await eventually(
      async () => (await fetch(`${world.proxy.adminUrl}/readyz`)).status === 503,
      8000,
    );
    expect(notReady).toBe(true);
    expect(await metricsOf(world)).toMatch(
      /^m2m_proxy_token_refresh_failures_total\{route="default",reason="invalid_response"\} [1-9]/m,
    );
    expect(world.api.requests.every((r) => !r.headers['x-injected'])).toBe(true);
  });
});
