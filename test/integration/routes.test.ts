import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Idp, makeSecretClient, startIdp } from '../../fixtures/idp.js';
import {
  freePort,
  type ProxyProcess,
  runCli,
  scanForSecrets,
  startProxy,
  type TempDir,
  tempDir,
} from '../../fixtures/process.js';
import { type RedisServer, startRedis } from '../../fixtures/redis.js';
import { startUpstream, type Upstream } from '../../fixtures/upstream.js';

/** Two APIs, each with its own client at one real IdP. */
const CLIENTS = {
  billing: { id: 'billing-client', secret: 'billing-secret-Rk29xLm4' },
  crm: { id: 'crm-client', secret: 'crm-secret-Pq71vNz8' },
  refused: { id: 'refused-client', secret: 'refused-secret-Wd45tYh3' },
} as const;

/** An `authorizationFile` holding `Basic base64(id:secret)` for `client`. */
async function authorizationFile(dir: TempDir, client: { id: string; secret: string }) {
  const basic = Buffer.from(`${client.id}:${client.secret}`).toString('base64');
  return dir.write(`${client.id}.authorization`, `Basic ${basic}\n`);
}

/** Tokens the IdP issued to `clientId` (successful token requests). */
function issued(idp: Idp, clientId: string): number {
  return idp.tokenLog.filter((r) => r.clientId === clientId && r.status === 200).length;
}

async function get(url: string): Promise<{ status: number; body: string; error: string | null }> {
  const res = await fetch(url);
  return {
    status: res.status,
    body: await res.text(),
    error: res.headers.get('x-m2m-proxy-error'),
  };
}

async function readyz(proxy: ProxyProcess): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${proxy.adminUrl}/readyz`);
  return { status: res.status, body: await res.json() };
}

/** Waits until `/readyz` answers 200 (every route holds a token); fails after 10 s. */
async function untilReady(proxy: ProxyProcess): Promise<void> {
  const deadline = Date.now() + 10_000;
  while ((await readyz(proxy)).status !== 200) {
    if (Date.now() > deadline) throw new Error('the proxy did not become ready within 10 s');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('routes: several APIs from one proxy process', () => {
  let idp: Idp;
  let billingApi: Upstream;
  let crmApi: Upstream;
  let dir: TempDir;
  let proxy: ProxyProcess;
  const port = { billing: 0, reports: 0, crm: 0 };

  beforeAll(async () => {
    dir = await tempDir();
    idp = await startIdp({
      clients: [
        makeSecretClient(CLIENTS.billing.id, CLIENTS.billing.secret),
        makeSecretClient(CLIENTS.crm.id, CLIENTS.crm.secret),
      ],
    });
    [billingApi, crmApi] = await Promise.all([
      startUpstream({ issuer: idp.issuer, audience: idp.audience, basePath: '/billing/v2' }),
      startUpstream({ issuer: idp.issuer, audience: idp.audience, basePath: '/crm/api' }),
    ]);
    port.billing = await freePort();
    port.reports = await freePort();
    port.crm = await freePort();
    const billingToken = {
      url: idp.tokenUrl,
      credentials: { authorizationFile: await authorizationFile(dir, CLIENTS.billing) },
      scope: 'read write',
      timeout: '2s',
    };
    proxy = await startProxy({
      config: {
        listen: { host: '127.0.0.1' },
        admin: { host: '127.0.0.1', port: await freePort() },
        routes: [
          {
            name: 'billing',
            listen: { port: port.billing },
            upstream: { url: billingApi.url, timeout: '5s' },
            token: billingToken,
            // One start per second: a burst of five takes four seconds to drain.
            rateLimit: { perSecond: 1, burst: 1, window: { max: 0 }, queue: { timeout: '10s' } },
          },
          {
            // The same token block as billing (an API of the same provider): one token for both.
            name: 'reports',
            listen: { port: port.reports },
            upstream: { url: billingApi.url, timeout: '5s' },
            token: { ...billingToken },
            rateLimit: { perSecond: 0, window: { max: 0 } },
          },
          {
            name: 'crm',
            listen: { port: port.crm },
            upstream: { url: crmApi.url, timeout: '5s' },
            token: {
              url: idp.tokenUrl,
              credentials: { authorizationFile: await authorizationFile(dir, CLIENTS.crm) },
              scope: 'read write',
              timeout: '2s',
            },
            rateLimit: { perSecond: 50, burst: 5, window: { max: 0 } },
          },
        ],
        log: { level: 'debug' },
        shutdown: { timeout: '5s' },
      },
    });
    await untilReady(proxy);
  });

  afterAll(async () => {
    const tokens = [...billingApi.requests, ...crmApi.requests]
      .map((r) => r.token)
      .filter((t): t is string => typeof t === 'string' && t.length > 20);
    proxy?.kill();
    await proxy?.exited;
    await Promise.all([billingApi?.close(), crmApi?.close(), idp?.close()]);
    await dir?.remove();
    scanForSecrets(
      [...proxy.stdout, ...proxy.stderr].join('\n'),
      [CLIENTS.billing.secret, CLIENTS.crm.secret, ...tokens],
      { clientIds: [CLIENTS.billing.id, CLIENTS.crm.id] },
    );
  });

  it("each port reaches only its upstream, with only its client's token", async () => {
    billingApi.reset();
    crmApi.reset();
    expect((await get(`http://127.0.0.1:${port.billing}/invoices/1`)).status).toBe(200);
    expect((await get(`http://127.0.0.1:${port.crm}/contacts/7`)).status).toBe(200);
    expect(billingApi.requests.map((r) => r.path)).toEqual(['/billing/v2/invoices/1']);
    expect(crmApi.requests.map((r) => r.path)).toEqual(['/crm/api/contacts/7']);
    expect(billingApi.requests[0]).toMatchObject({
      auth: 'ok',
      claims: { client_id: CLIENTS.billing.id },
    });
    expect(crmApi.requests[0]).toMatchObject({ auth: 'ok', claims: { client_id: CLIENTS.crm.id } });
  });

  it('routes with equal token blocks share one token: one token request for both', async () => {
    expect((await get(`http://127.0.0.1:${port.billing}/a`)).status).toBe(200);
    expect((await get(`http://127.0.0.1:${port.reports}/b`)).status).toBe(200);
    expect(issued(idp, CLIENTS.billing.id)).toBe(1);
    expect(issued(idp, CLIENTS.crm.id)).toBe(1);
    const tokens = new Set(billingApi.requests.map((r) => r.token));
    expect(tokens.size).toBe(1);
  });

  it('a saturated route does not slow an idle one (own pacer per route)', async () => {
    crmApi.reset();
    billingApi.reset();
    const began = Date.now();
    // Five at once on billing (1/s): the last one starts ~4 s later.
    const billing = Array.from({ length: 5 }, (_, i) =>
      get(`http://127.0.0.1:${port.billing}/burst/${i}`).then(() => Date.now() - began),
    );
    await expect.poll(() => billingApi.requests.length).toBeGreaterThanOrEqual(1);
    const crmStarted = Date.now();
    const crm = await Promise.all(
      Array.from({ length: 5 }, (_, i) => get(`http://127.0.0.1:${port.crm}/quick/${i}`)),
    );
    const crmTook = Date.now() - crmStarted;
    expect(crm.every((r) => r.status === 200)).toBe(true);
    // Five within crm's burst of 5 go at once; behind billing's queue they would take 4 s.
    expect(crmTook).toBeLessThan(1000);
    const billingDone = await Promise.all(billing);
    expect(Math.max(...billingDone)).toBeGreaterThanOrEqual(3500);
  });

  it("a 401 on one route renews only that route's token", async () => {
    const billingBefore = issued(idp, CLIENTS.billing.id);
    const crmBefore = issued(idp, CLIENTS.crm.id);
    // The crm token was accepted before; the API now refuses it (revoked): renew and replay once.
    crmApi.revokeSeenTokens();
    expect((await get(`http://127.0.0.1:${port.crm}/after-revoke`)).status).toBe(200);
    expect(issued(idp, CLIENTS.crm.id)).toBe(crmBefore + 1);
    expect(issued(idp, CLIENTS.billing.id)).toBe(billingBefore);
    expect((await get(`http://127.0.0.1:${port.billing}/still-fine`)).status).toBe(200);
    expect(issued(idp, CLIENTS.billing.id)).toBe(billingBefore);
  });

  it('labels every route metric with its route, and logs name the route', async () => {
    const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
    for (const route of ['billing', 'reports', 'crm']) {
      expect(text).toMatch(
        new RegExp(
          `^m2m_proxy_upstream_responses_total\\{route="${route}",code="200"\\} [1-9]`,
          'm',
        ),
      );
      expect(text).toMatch(
        new RegExp(`^m2m_proxy_token_expiry_timestamp_seconds\\{route="${route}"\\} [1-9]`, 'm'),
      );
      expect(text).toMatch(new RegExp(`^m2m_proxy_queue_length\\{route="${route}"\\} 0$`, 'm'));
    }
    // The shared token is both routes' token; each route counts its one issuance.
    expect(text).toMatch(
      /^m2m_proxy_token_refreshes_total\{route="billing",result="success"\} 1$/m,
    );
    expect(text).toMatch(
      /^m2m_proxy_token_refreshes_total\{route="reports",result="success"\} 1$/m,
    );
    expect(text).toMatch(/^m2m_proxy_token_refreshes_total\{route="crm",result="success"\} 2$/m);
    const listening = proxy.logs.filter((l) => l.event === 'listening').map((l) => l.route);
    expect(listening).toEqual(['billing', 'reports', 'crm']);
    const rejected = proxy.logs.find((l) => l.event === 'token_rejected_by_upstream');
    expect(rejected?.route).toBe('crm');
  });
});

describe('routes: a route whose client is refused', () => {
  it('answers 503 token_unavailable while the others serve, and /readyz names it', async () => {
    const dir = await tempDir();
    const idp = await startIdp({
      clients: [makeSecretClient(CLIENTS.crm.id, CLIENTS.crm.secret)],
    });
    const api = await startUpstream({ issuer: idp.issuer, audience: idp.audience });
    const route = async (name: string, client: { id: string; secret: string }) => ({
      name,
      listen: { port: await freePort() },
      upstream: { url: api.url },
      token: {
        url: idp.tokenUrl,
        credentials: { authorizationFile: await authorizationFile(dir, client) },
        retry: { min: '1s', max: '2s' },
      },
      rateLimit: { perSecond: 0, window: { max: 0 }, queue: { timeout: '1s' } },
    });
    const routes = [await route('crm', CLIENTS.crm), await route('broken', CLIENTS.refused)];
    const proxy = await startProxy({
      config: {
        admin: { host: '127.0.0.1', port: await freePort() },
        routes,
        shutdown: { timeout: '2s' },
      },
    });
    try {
      await proxy.waitForLog((l) => l.event === 'token_renewal_failed' && l.route === 'broken');
      expect((await get(`http://127.0.0.1:${routes[0]?.listen.port}/ok`)).status).toBe(200);
      const refused = await get(`http://127.0.0.1:${routes[1]?.listen.port}/no`);
      expect(refused.status).toBe(503);
      expect(refused.error).toBe('token_unavailable');
      expect(await readyz(proxy)).toEqual({
        status: 503,
        body: { status: 'not_ready', reason: 'no_token_yet', routes: { broken: 'no_token_yet' } },
      });
      expect(api.requests.every((r) => r.claims?.client_id === CLIENTS.crm.id)).toBe(true);
      const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
      expect(text).toMatch(
        /^m2m_proxy_token_refresh_failures_total\{route="broken",reason="invalid_client"\} [1-9]/m,
      );
      expect(text).toMatch(
        /^m2m_proxy_requests_rejected_total\{route="broken",reason="token_unavailable"\} 1$/m,
      );
      expect(await proxy.stop()).toBe(0);
    } finally {
      proxy.kill();
      await proxy.exited;
      await Promise.all([api.close(), idp.close()]);
      await dir.remove();
    }
    scanForSecrets([...proxy.stdout, ...proxy.stderr].join('\n'), [
      CLIENTS.crm.secret,
      CLIENTS.refused.secret,
    ]);
  });
});

describe('routes: the same rateLimit.shared.key (real Redis)', () => {
  let redis: RedisServer;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(() => redis?.stop());

  it('draws both routes from one budget', async () => {
    const dir = await tempDir();
    const idp = await startIdp({
      clients: [makeSecretClient(CLIENTS.crm.id, CLIENTS.crm.secret)],
    });
    const api = await startUpstream({ issuer: idp.issuer, audience: idp.audience });
    const token = {
      url: idp.tokenUrl,
      credentials: { authorizationFile: await authorizationFile(dir, CLIENTS.crm) },
    };
    const rateLimit = {
      perSecond: 2,
      burst: 1,
      window: { max: 0 },
      queue: { timeout: '20s' },
      shared: { redis: redis.url, key: `routes-${Date.now()}` },
    };
    const ports = [await freePort(), await freePort()];
    const proxy = await startProxy({
      config: {
        admin: { host: '127.0.0.1', port: await freePort() },
        routes: ports.map((port, i) => ({
          name: `api-${i}`,
          listen: { port },
          upstream: { url: api.url },
          token,
          rateLimit,
        })),
      },
    });
    try {
      await expect.poll(async () => (await readyz(proxy)).status, { timeout: 10_000 }).toBe(200);
      api.reset();
      const began = Date.now();
      // Three on each route: six starts at 2/s together take ≥ 2.5 s; apart they would take 1 s.
      const all = await Promise.all(
        ports.flatMap((port) => [0, 1, 2].map((i) => get(`http://127.0.0.1:${port}/shared/${i}`))),
      );
      expect(all.every((r) => r.status === 200)).toBe(true);
      expect(Date.now() - began).toBeGreaterThanOrEqual(2400);
      const times = api.requests.map((r) => r.time).sort((a, b) => a - b);
      expect(times).toHaveLength(6);
      // One budget: the sixth start is ≥ 2.5 s after the first. Two budgets would have started
      // each route's three within 1 s, in parallel (a span of ~1 s, far below 2 s).
      expect((times[5] as number) - (times[0] as number)).toBeGreaterThanOrEqual(2000);
      const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
      expect(text).toMatch(/^m2m_proxy_shared_budget_up\{route="api-0"\} 1$/m);
      expect(text).toMatch(/^m2m_proxy_shared_budget_up\{route="api-1"\} 1$/m);
      expect(await proxy.stop()).toBe(0);
    } finally {
      proxy.kill();
      await proxy.exited;
      await Promise.all([api.close(), idp.close()]);
      await dir.remove();
    }
  });
});

describe('routes: bad configurations', () => {
  it('exit 2 with every route error named, listening on nothing', async () => {
    const dir = await tempDir();
    try {
      const file = await dir.write(
        'bad.yaml',
        `admin: { port: 9090 }
upstream: { url: "http://127.0.0.1:1/api" }
routes:
  - name: Billing
    listen: { port: 8081 }
    upstream: { url: "http://127.0.0.1:1/b" }
    token: { url: "http://127.0.0.1:1/token" }
  - name: crm
    listen: { port: 99999 }
    upstream: { url: "http://127.0.0.1:1/c" }
    token: { url: "http://127.0.0.1:1/token", credentials: { authorizationFile: /x } }
`,
      );
      const { code, stdout, stderr } = await runCli(['--config', file, '--check']);
      expect(code).toBe(2);
      expect(stdout).toBe('');
      expect(stderr).toContain('bad.yaml:2:1: upstream: cannot be used together with routes');
      expect(stderr).toContain('bad.yaml:4:5: routes[0].name: must be a lower-case name');
      expect(stderr).toContain(
        'bad.yaml:9:15: routes[1].listen.port: must be an integer between 0 and 65535',
      );
      expect(stderr).not.toMatch(/\bat .*\.js:\d+/); // no stack trace

      const dup = await dir.write(
        'dup.yaml',
        `admin: { port: 9090 }
routes:
  - name: a
    listen: { port: 9090 }
    upstream: { url: "http://127.0.0.1:1/a" }
    token: { url: "http://127.0.0.1:1/token", credentials: { authorizationFile: /x } }
  - name: a
    listen: { port: 9090 }
    upstream: { url: "http://127.0.0.1:1/b" }
    token: { url: "http://127.0.0.1:1/token", credentials: { authorizationFile: /x } }
`,
      );
      const second = await runCli(['--config', dup]);
      expect(second.code).toBe(2);
      expect(second.stderr).toContain('routes[0].listen.port: 9090 is the admin port');
      expect(second.stderr).toContain('routes[1].name: "a" is already routes[0]\'s name');
      expect(second.stderr).toContain("routes[1].listen.port: 9090 is already routes[0]'s port");
    } finally {
      await dir.remove();
    }
  });

  it('--check summarises every route and names the routes whose credentials are unreadable', async () => {
    const dir = await tempDir();
    try {
      const auth = await dir.write('auth', 'Basic YTpi\n');
      const routes = (second: string) => `admin: { port: 9090 }
routes:
  - name: billing
    listen: { port: 8081 }
    upstream: { url: "http://127.0.0.1:1/b" }
    token: &t { url: "http://127.0.0.1:1/token", credentials: { authorizationFile: ${auth} } }
    rateLimit: { perSecond: 2 }
  - name: crm
    listen: { port: 8082 }
    upstream: { url: "http://127.0.0.1:1/c" }
    token: ${second}
`;
      const good = await dir.write('good.yaml', routes('*t'));
      const ok = await runCli(['--config', good, '--check']);
      expect(ok.stderr).toBe('');
      expect(ok.code).toBe(0);
      expect(ok.stdout).toContain('route billing: listen 127.0.0.1:8081');
      expect(ok.stdout).toContain('route crm: listen 127.0.0.1:8082');
      expect(ok.stdout).toContain('upstream:    http://127.0.0.1:1/c');
      expect(ok.stdout).toContain('pacing:      2/s burst 1');
      expect(ok.stdout).toContain('shares its token with: crm');

      const bad = await dir.write(
        'bad-creds.yaml',
        routes(
          `{ url: "http://127.0.0.1:1/token", credentials: { authorizationFile: ${dir.path}/missing } }`,
        ),
      );
      const refused = await runCli(['--config', bad, '--check']);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain('routes[1] (crm): ');
      expect(refused.stderr).not.toContain('routes[0]');
    } finally {
      await dir.remove();
    }
  });
});
