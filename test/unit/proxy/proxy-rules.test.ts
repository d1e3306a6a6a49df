import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PROXY_ERRORS, ProxyError } from '../../../src/proxy/errors.js';
import { retryAfterMs } from '../../../src/proxy/handler.js';
import { rawHeader, requestHead, responseHeaders, withBearer } from '../../../src/proxy/headers.js';
import { pathPrefix, upstreamPath } from '../../../src/proxy/target.js';

describe('request targets', () => {
  it('appends origin-form targets to the upstream prefix', () => {
    expect(upstreamPath('/api/v1', '/users?id=1')).toBe('/api/v1/users?id=1');
    expect(upstreamPath('', '/')).toBe('/');
    expect(upstreamPath('/api', '/a/b.json?x=../y')).toBe('/api/a/b.json?x=../y'); // dots in the query are data
    expect(upstreamPath('/api', '/files/..hidden/v1.2')).toBe('/api/files/..hidden/v1.2');
    expect(pathPrefix(new URL('https://api.example.test/api/v1/'))).toBe('/api/v1');
    expect(pathPrefix(new URL('https://api.example.test'))).toBe('');
  });

  it.each([
    'http://other.example/',
    'https://other.example/x',
    'other.example:443',
    '*',
    '',
    '//other.example/x',
    '/../admin',
    '/a/../../admin',
    '/a/..',
    '/a/./b',
    '/%2e%2e/admin',
    '/%2E%2E/admin',
    '/.%2e/admin',
    '/a/..%2f..%2fadmin',
    '/a/..%5cadmin',
    '/a\\..\\admin',
    '/a/%ZZ',
    '/..;/admin',
    '/a/..;jsessionid=x/..;/admin',
    '/.;x/admin',
    '/%2e%2e;/admin',
    '/%2e%2e%3b/admin',
    '/..%3bx/admin',
  ])('refuses %j', (target) => {
    expect(upstreamPath('/api/v1', target)).toBeUndefined();
  });

  it('never yields a path that climbs above the prefix (property)', () => {
    const segment = fc.oneof(
      fc.constantFrom('..', '.', '%2e%2e', '%2E.', '.%2e', '..%2f', '%5c..', 'a', 'b', '%41', ''),
      fc.stringMatching(/^[a-z0-9._~-]{0,6}$/),
    );
    fc.assert(
      fc.property(fc.array(segment, { maxLength: 8 }), (segments) => {
        const path = upstreamPath('/api/v1', `/${segments.join('/')}`);
        if (path === undefined) return;
        // Resolve the path the way a URL parser (and so an upstream router) would.
        const resolved = new URL(path, 'http://upstream.test').pathname;
        expect(resolved.startsWith('/api/v1')).toBe(true);
        const decoded = decodeURIComponent(resolved).replace(/\\/g, '/');
        expect(decoded.split('/')).not.toContain('..');
      }),
      { numRuns: 2000 },
    );
  });
});

describe('request targets seen by a servlet container', () => {
  /**
   * How Tomcat resolves a path: one percent-decoding, then each segment without its path
   * parameters (`;...`), then dot segments. The result must stay inside the prefix.
   */
  function tomcatResolve(path: string): string[] {
    const out: string[] = [];
    for (const raw of decodeURIComponent(path).split(/[/\\]/)) {
      const segment = raw.split(';', 1)[0] as string;
      if (segment === '..') out.pop();
      else if (segment !== '.' && segment !== '') out.push(segment);
    }
    return out;
  }

  it('forwards /%252e%252e/ (inside after one decoding) and refuses what climbs after it', () => {
    expect(upstreamPath('/api/v1', '/%252e%252e/x')).toBe('/api/v1/%252e%252e/x');
    expect(upstreamPath('/api/v1', '/a;v=1/b')).toBe('/api/v1/a;v=1/b');
    expect(upstreamPath('/api/v1', '/a/..;/b')).toBeUndefined();
  });

  it('never yields a path that climbs above the prefix once parameters are dropped (property)', () => {
    const segment = fc.oneof(
      fc.constantFrom('..;', '..;x=1', '.;', '%2e%2e;', '..%3b', '%2e%2e%3bv', ';', 'a;b', 'a'),
      fc.constantFrom('..', '.', '%252e%252e', '%2e', '..%2f', 'b', ''),
      fc.stringMatching(/^[a-z0-9.;=~-]{0,6}$/),
    );
    fc.assert(
      fc.property(fc.array(segment, { maxLength: 8 }), (segments) => {
        const path = upstreamPath('/api/v1', `/${segments.join('/')}`);
        if (path === undefined) return;
        expect(tomcatResolve(path).slice(0, 2)).toEqual(['api', 'v1']);
        expect(tomcatResolve(path)).not.toContain('..');
      }),
      { numRuns: 3000 },
    );
  });
});

describe('headers', () => {
  /** A raw list as node:http and undici give it: names in any case, fields may repeat. */
  const raw = (pairs: [string, string][]) => pairs.flat();

  it("drops the client's credentials and hop-by-hop headers and sets the bearer", () => {
    const head = requestHead(
      raw([
        ['Host', 'localhost:8080'],
        ['Authorization', 'Basic Y2xpZW50OnNlY3JldA=='],
        ['Proxy-Authorization', 'Basic eA=='],
        ['X-Private', 'hop'],
        ['Connection', 'keep-alive, X-Private'],
        ['Keep-Alive', 'timeout=5'],
        ['TE', 'trailers'],
        ['Transfer-Encoding', 'chunked'],
        ['Upgrade', 'h2c'],
        ['Expect', '100-continue'],
        ['Content-Type', 'application/json'],
        ['Content-Length', '12'],
        ['x-request-id', 'abc'],
        ['Cookie', 'a=b'],
        ['Cookie', 'c=d'],
      ]),
    );
    expect(withBearer(head.headers, 'tkn')).toEqual(
      raw([
        ['Content-Type', 'application/json'],
        ['Content-Length', '12'],
        ['x-request-id', 'abc'],
        ['Cookie', 'a=b'],
        ['Cookie', 'c=d'],
        ['authorization', 'Bearer tkn'],
      ]),
    );
    expect(head.contentLength).toBe('12');
    expect(head.chunked).toBe(true);
    // A replay after a 401 sets the renewed token in the same slot.
    expect(withBearer(head.headers, 'new').slice(-2)).toEqual(['authorization', 'Bearer new']);
  });

  it('reports no body framing when the client sent none', () => {
    const head = requestHead(raw([['host', 'x']]));
    expect(head).toEqual({
      headers: ['authorization', ''],
      contentLength: undefined,
      chunked: false,
    });
  });

  it('drops hop-by-hop headers from responses and keeps the rest', () => {
    const buffers = raw([
      ['x-hop', '1'],
      ['Connection', 'close, X-Hop'],
      ['Transfer-Encoding', 'chunked'],
      ['Content-Type', 'text/plain'],
      ['Set-Cookie', 'a=1'],
      ['Set-Cookie', 'b=2'],
      ['WWW-Authenticate', 'Bearer'],
      ['Retry-After', '7'],
    ]).map((x) => Buffer.from(x, 'latin1'));
    expect(responseHeaders(buffers)).toEqual(
      raw([
        ['Content-Type', 'text/plain'],
        ['Set-Cookie', 'a=1'],
        ['Set-Cookie', 'b=2'],
        ['WWW-Authenticate', 'Bearer'],
        ['Retry-After', '7'],
      ]),
    );
    expect(rawHeader(buffers, 'retry-after')).toBe('7');
    expect(rawHeader(buffers, 'age')).toBeUndefined();
  });
});

describe('Retry-After', () => {
  it('reads delay-seconds and HTTP dates', () => {
    const now = Date.parse('2026-11-25T10:00:00Z');
    expect(retryAfterMs('3', now)).toBe(3000);
    expect(retryAfterMs('Wed, 25 Nov 2026 10:00:05 GMT', now)).toBe(5000);
    expect(retryAfterMs('Wed, 25 Nov 2026 09:00:00 GMT', now)).toBe(0);
    expect(retryAfterMs('soon', now)).toBeUndefined();
    expect(retryAfterMs(undefined, now)).toBeUndefined();
  });
});

describe('error catalogue', () => {
  it('matches the table of docs/behaviour.md', () => {
    expect(
      Object.fromEntries(Object.entries(PROXY_ERRORS).map(([code, e]) => [code, e.status])),
    ).toEqual({
      bad_request: 400,
      method_not_allowed: 405,
      request_timeout: 408,
      rate_limited: 429,
      upstream_unreachable: 502,
      token_unavailable: 503,
      shutting_down: 503,
      upstream_timeout: 504,
      internal_error: 500,
    });
    const error = new ProxyError('rate_limited', undefined, { retryAfterMs: 2000 });
    expect(JSON.parse(error.body())).toEqual({
      error: 'rate_limited',
      message: PROXY_ERRORS.rate_limited.message,
    });
  });
});
