import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot, scanForSecrets } from '../../fixtures/process.js';
import type { UpstreamRequest } from '../../fixtures/upstream.js';
import { type OtlpReceiver, type ReceivedSpan, startOtlpReceiver } from '../support/otlp.js';
import { CLIENT_ID, startWorld, type World } from './world.js';

/** Makes the child report every file of an @opentelemetry package it loads, on stderr. */
const REPORT_OTEL_LOADS = {
  NODE_OPTIONS: `--require ${repoRoot}test/support/report-otel-loads.cjs`,
};
const otelLoads = (world: World) => world.proxy.stderr.filter((l) => l.startsWith('otel-loaded '));

/** A value only ever sent in query strings: it must reach no span, no log line. */
const QUERY_SECRET = 'qs-apikey-Hj7w2Lp9Xv4c';
const TRACE_A = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_A = '00f067aa0ba902b7';
const TRACE_B = '0af7651916cd43dd8448eb211c80319c';
const PARENT_B = 'b7ad6b7169203331';

const sha12 = (s: string) => createHash('sha256').update(s).digest('hex').slice(0, 12);

/** Resolves once `/readyz` answers 200 (a token is held); usable outside a test too. */
async function ready(world: World): Promise<void> {
  const deadline = Date.now() + 10_000;
  while ((await fetch(`${world.proxy.adminUrl}/readyz`)).status !== 200) {
    if (Date.now() > deadline) throw new Error('the proxy did not become ready');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * One proxy with tracing (to a real OTLP/HTTP receiver) and the access log on, paced at 2/s so
 * that a request queues, between the real IdP and the real token-verifying upstream. The
 * requests run once; the spans are exported by the flush on SIGTERM; the tests read them.
 */
describe('tracing, access log and audit trail (real OTLP receiver, real IdP and upstream)', () => {
  let otlp: OtlpReceiver;
  let world: World;
  let exitCode: number | null;
  let statuses: number[];
  /** What the upstream saw of each request, by the client's request name. */
  const seen = new Map<string, UpstreamRequest[]>();
  let revokedToken: string | undefined;

  beforeAll(async () => {
    otlp = await startOtlpReceiver();
    world = await startWorld({
      proxy: {
        tracing: { endpoint: otlp.url },
        log: { level: 'info', access: true },
        rateLimit: { perSecond: 2, burst: 1, window: { max: 0 } },
      },
      env: REPORT_OTEL_LOADS,
    });
    await ready(world);
    const get = async (name: string, headers: Record<string, string> = {}) => {
      const before = world.api.requests.length;
      const res = await fetch(`${world.proxy.url}/echo/${name}?apikey=${QUERY_SECRET}`, {
        headers,
      });
      await res.text();
      seen.set(name, world.api.requests.slice(before));
      return res.status;
    };
    statuses = [];
    // a: continues the client's trace.
    statuses.push(
      await get('a', {
        traceparent: `00-${TRACE_A}-${PARENT_A}-01`,
        tracestate: 'vendor=opaque-state',
      }),
    );
    // b and c together: at 2/s one of them waits in the queue.
    statuses.push(...(await Promise.all([get('b'), get('c')])));
    // d: the upstream refuses the token (401); the renewal is slowed down so the request waits
    // for it; the replay is a second attempt.
    revokedToken = world.api.requests.at(-1)?.token;
    world.idp.fail({ delayMs: 300, times: 1 });
    world.api.revokeSeenTokens();
    statuses.push(await get('d', { traceparent: `00-${TRACE_B}-${PARENT_B}-01` }));
    exitCode = await world.proxy.stop();
  }, 60_000);

  afterAll(async () => {
    await world?.close();
    await otlp?.close();
  });

  const spansOf = (traceId: string) => otlp.spans.filter((s) => s.traceId === traceId);
  const child = (spans: readonly ReceivedSpan[], parent: ReceivedSpan, name?: string) =>
    spans.filter((s) => s.parentSpanId === parent.spanId && (!name || s.name === name));
  const serverOf = (path: string) => {
    const s = otlp.spans.find((x) => x.kind === 'server' && x.attributes['url.path'] === path);
    if (!s) throw new Error(`no server span for ${path}`);
    return s;
  };

  it('answers every request and flushes the spans on SIGTERM', () => {
    expect(statuses).toEqual([200, 200, 200, 200]);
    expect(exitCode).toBe(0);
    expect(otlp.paths.every((p) => p === '/v1/traces')).toBe(true);
    expect(otlp.spans.every((s) => s.serviceName === 'm2m-proxy')).toBe(true);
    expect(otelLoads(world).some((l) => l.includes('sdk-trace-base'))).toBe(true);
  });

  it("continues the client's trace: server span under its traceparent, upstream under the client span", () => {
    const spans = spansOf(TRACE_A);
    const server = spans.find((s) => s.kind === 'server');
    expect(server).toBeDefined();
    if (!server) return;
    expect(server.parentSpanId).toBe(PARENT_A);
    expect(server.name).toBe('GET');
    expect(server.attributes).toMatchObject({
      'http.request.method': 'GET',
      'url.path': '/echo/a',
      'url.scheme': 'http',
      'http.response.status_code': 200,
      'm2m_proxy.route': 'default',
    });
    const [attempt, ...others] = child(spans, server).filter((s) => s.kind === 'client');
    expect(others).toHaveLength(0);
    expect(attempt?.attributes).toMatchObject({
      'http.request.method': 'GET',
      'http.response.status_code': 200,
      'server.address': '127.0.0.1',
      'server.port': world.api.port,
      'url.full': `${world.api.url}/echo/a`,
    });
    // Timing order: the attempt lies within the request.
    if (!attempt) return;
    expect(attempt.start).toBeGreaterThanOrEqual(server.start);
    expect(attempt.end).toBeLessThanOrEqual(server.end);
    // The upstream's traceparent continues the client's trace with the attempt span as parent.
    const upstream = seen.get('a')?.[0];
    expect(upstream?.headers.traceparent).toBe(`00-${TRACE_A}-${attempt.spanId}-01`);
    expect(upstream?.headers.tracestate).toBe('vendor=opaque-state');
    expect(upstream?.rawHeaders.filter((h) => h.toLowerCase() === 'traceparent')).toHaveLength(1);
  });

  it('shows the queue wait of a paced request before its attempt', () => {
    const queued = otlp.spans.filter((s) => s.name === 'queue wait');
    expect(queued.length).toBeGreaterThanOrEqual(1);
    for (const q of queued) {
      const server = otlp.spans.find((s) => s.spanId === q.parentSpanId);
      expect(server?.kind).toBe('server');
      if (!server) continue;
      // The attempt this wait came before (a replay waits again after its first attempt).
      const attempt = child(otlp.spans, server)
        .filter((s) => s.kind === 'client' && s.start >= q.start)
        .sort((x, y) => Number(x.start - y.start))[0];
      expect(q.start).toBeGreaterThanOrEqual(server.start);
      expect(q.end).toBeGreaterThan(q.start);
      expect(attempt && q.end <= attempt.start).toBe(true);
    }
    // b or c: a trace of their own (no traceparent sent), rooted at the server span.
    const paths = queued.map(
      (q) => otlp.spans.find((s) => s.spanId === q.parentSpanId)?.attributes['url.path'],
    );
    expect(paths.some((p) => p === '/echo/b' || p === '/echo/c')).toBe(true);
    expect(serverOf('/echo/b').parentSpanId).toBe('');
  });

  it('shows a replayed 401 as two attempts around a token wait linked to the renewal', () => {
    const spans = spansOf(TRACE_B);
    const server = spans.find((s) => s.kind === 'server');
    expect(server?.parentSpanId).toBe(PARENT_B);
    if (!server) return;
    const attempts = child(spans, server)
      .filter((s) => s.kind === 'client')
      .sort((x, y) => Number(x.start - y.start));
    expect(attempts.map((a) => a.attributes['http.response.status_code'])).toEqual([401, 200]);
    expect(attempts[0]?.attributes['http.request.resend_count']).toBeUndefined();
    expect(attempts[1]?.attributes['http.request.resend_count']).toBe(1);
    expect(attempts[0]?.statusCode).toBe(2);
    // The wait for the new token sits between the attempts and links to the renewal's span.
    const wait = spans.find((s) => s.name === 'token wait');
    expect(wait).toBeDefined();
    if (!wait || !attempts[0] || !attempts[1]) return;
    expect(wait.start).toBeGreaterThanOrEqual(attempts[0].end);
    expect(wait.end).toBeLessThanOrEqual(attempts[1].start);
    const renewal = otlp.spans.find(
      (s) =>
        s.name === 'token renewal' &&
        s.attributes['m2m_proxy.renewal.cause'] === 'upstream_rejected',
    );
    expect(renewal).toBeDefined();
    if (!renewal) return;
    expect(renewal.kind).toBe('client');
    expect(renewal.parentSpanId).toBe(''); // a renewal is a trace of its own ...
    expect(wait.links).toContainEqual({ traceId: renewal.traceId, spanId: renewal.spanId }); // ... linked
    expect(renewal.end - renewal.start).toBeGreaterThanOrEqual(250_000_000n); // the injected 300 ms
    // Each attempt's traceparent reached the upstream: 401 under the first, 200 under the second.
    const upstream = seen.get('d') ?? [];
    expect(upstream.map((r) => r.status)).toEqual([401, 200]);
    expect(upstream.map((r) => r.headers.traceparent)).toEqual(
      attempts.map((a) => `00-${TRACE_B}-${a.spanId}-01`),
    );
  });

  it('records the first token renewal as a span, and no span holds a secret, token or query', () => {
    expect(
      otlp.spans.some(
        (s) => s.name === 'token renewal' && s.attributes['m2m_proxy.renewal.cause'] === 'initial',
      ),
    ).toBe(true);
    const text = otlp.bodies.join('\n');
    expect(text).not.toContain(QUERY_SECRET);
    expect(text).not.toContain('apikey');
    scanForSecrets(text, world.secrets(), { clientIds: [CLIENT_ID] });
  });

  it('writes one typed access line per request, with the trace id and no query', () => {
    const lines = world.proxy.logs.filter((l) => l.event === 'access');
    expect(lines).toHaveLength(4);
    for (const l of lines) {
      expect(l).toMatchObject({ route: 'default', method: 'GET', status: 200, error: null });
      for (const key of ['durationMs', 'queueMs', 'upstreamMs', 'attempts', 'bytesIn', 'bytesOut'])
        expect(typeof l[key], key).toBe('number');
      expect(l.traceId).toMatch(/^[0-9a-f]{32}$/);
      expect(String(l.path)).toMatch(/^\/echo\/[a-d]$/);
      expect(l.bytesOut as number).toBeGreaterThan(0);
      expect(l.upstreamMs as number).toBeGreaterThan(0);
      expect(l.durationMs as number).toBeGreaterThanOrEqual(l.upstreamMs as number);
    }
    const d = lines.find((l) => l.path === '/echo/d');
    expect(d).toMatchObject({ attempts: 2, traceId: TRACE_B });
    expect(lines.find((l) => l.path === '/echo/a')).toMatchObject({
      attempts: 1,
      traceId: TRACE_A,
    });
    // The queued one of b and c waited about half a second (2/s).
    const waits = lines.filter((l) => l.path === '/echo/b' || l.path === '/echo/c');
    expect(Math.max(...waits.map((l) => l.queueMs as number))).toBeGreaterThan(100);
    const text = world.proxy.stdout.join('\n');
    expect(text).not.toContain(QUERY_SECRET);
  });

  it('audits every token issued with the fingerprint of the token the upstream received', () => {
    const issued = world.proxy.logs.filter((l) => l.event === 'token_issued');
    expect(issued.length).toBeGreaterThanOrEqual(2);
    for (const l of issued) {
      expect(l).toMatchObject({
        audit: true,
        route: 'default',
        clientId: CLIENT_ID,
        audience: null,
      });
      expect(typeof l.scope).toBe('string');
      expect(l.fingerprint).toMatch(/^[0-9a-f]{12}$/);
      expect(Date.parse(String(l.expiresAt))).toBeGreaterThan(Date.now());
    }
    const tokens = [...new Set(world.api.requests.map((r) => r.token).filter(Boolean))] as string[];
    expect(tokens.length).toBeGreaterThanOrEqual(2);
    for (const token of tokens) expect(issued.map((l) => l.fingerprint)).toContain(sha12(token));
    // The 401 is audited with the fingerprint of the refused token.
    expect(revokedToken).toBeDefined();
    const rejected = world.proxy.logs.find((l) => l.event === 'token_rejected_by_upstream');
    expect(rejected).toMatchObject({
      audit: true,
      route: 'default',
      fingerprint: sha12(revokedToken ?? ''),
      consecutive: 1,
    });
  });
});

describe('without tracing', () => {
  it('never loads OpenTelemetry, passes traceparent and tracestate through unchanged and logs no access line by default', async () => {
    const world = await startWorld({ env: REPORT_OTEL_LOADS });
    try {
      await ready(world);
      const traceparent = `00-${TRACE_A}-${PARENT_A}-01`;
      const res = await fetch(`${world.proxy.url}/echo/plain`, {
        headers: { traceparent, tracestate: 'a=1,b=2' },
      });
      expect(res.status).toBe(200);
      const upstream = world.api.requests.at(-1);
      expect(upstream?.headers.traceparent).toBe(traceparent);
      expect(upstream?.headers.tracestate).toBe('a=1,b=2');
      expect(world.proxy.logs.some((l) => l.event === 'access')).toBe(false);
      expect(otelLoads(world)).toEqual([]);
      expect(world.proxy.logs.find((l) => l.event === 'listening')).toMatchObject({
        tracing: 'off',
        accessLog: false,
      });
    } finally {
      await world.close();
    }
  });
});

describe('access log without tracing', () => {
  it('counts body bytes in and out, streamed or kept, and names the proxy error code', async () => {
    const world = await startWorld({ proxy: { log: { level: 'warn', access: true } } });
    try {
      await ready(world);
      // 200 KB: above the replay limit, so streamed (chunked) to the upstream.
      const big = Buffer.alloc(200 * 1024, 'b');
      const chunked = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(big.subarray(0, 100 * 1024));
          c.enqueue(big.subarray(100 * 1024));
          c.close();
        },
      });
      const up = await fetch(`${world.proxy.url}/upload`, {
        method: 'POST',
        body: chunked,
        duplex: 'half',
      } as RequestInit);
      const upText = await up.text();
      const small = await fetch(`${world.proxy.url}/upload`, {
        method: 'POST',
        body: 'x'.repeat(1000),
      });
      const smallText = await small.text();
      const down = await fetch(`${world.proxy.url}/download?bytes=300000`);
      expect((await down.arrayBuffer()).byteLength).toBe(300_000);
      // node:http sends the path as written (fetch would normalise the dot segment away).
      const bad = await new Promise<{ status: number; text: string }>((resolve, reject) => {
        const u = new URL(world.proxy.url);
        request({ host: u.hostname, port: u.port, path: '/%2e%2e/escape?secret=no' }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }),
          );
        })
          .on('error', reject)
          .end();
      });
      const badText = bad.text;
      expect([up.status, small.status, down.status, bad.status]).toEqual([200, 200, 200, 400]);
      await expect.poll(() => world.proxy.logs.filter((l) => l.event === 'access').length).toBe(4);
      const lines = world.proxy.logs.filter((l) => l.event === 'access');
      expect(lines[0]).toMatchObject({
        method: 'POST',
        path: '/upload',
        status: 200,
        bytesIn: big.length,
        bytesOut: Buffer.byteLength(upText),
        attempts: 1,
        traceId: null,
      });
      expect(lines[1]).toMatchObject({
        bytesIn: 1000,
        bytesOut: Buffer.byteLength(smallText),
      });
      expect(lines[2]).toMatchObject({ path: '/download', bytesIn: 0, bytesOut: 300_000 });
      expect(lines[3]).toMatchObject({
        path: '/%2e%2e/escape',
        status: 400,
        error: 'bad_request',
        attempts: 0,
        bytesOut: Buffer.byteLength(badText),
      });
      expect(world.proxy.stdout.join('\n')).not.toContain('secret=no');
    } finally {
      await world.close();
    }
  });
});
