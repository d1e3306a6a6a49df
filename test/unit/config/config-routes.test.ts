import { describe, expect, it } from 'vitest';
import { loadConfig, routeEnvName } from '../../../src/config/load.js';
import { tokenGroups } from '../../../src/config/token-groups.js';
import { configFile, problems } from './helpers.js';

const TOKEN = `
    token:
      url: https://idp.example.test/token
      credentials: { authorizationFile: /run/secrets/billing }`;

const TWO_ROUTES = `
listen: { host: 127.0.0.2 }
routes:
  - name: billing
    listen: { port: 8081 }
    upstream: { url: https://billing.example.test/v2 }${TOKEN}
    rateLimit: { perSecond: 2 }
  - name: crm
    listen: { port: 8082, host: 0.0.0.0 }
    upstream: { url: https://crm.example.test/api }
    token:
      url: https://idp.example.test/token
      credentials: { authorizationFile: /run/secrets/crm }
`;

describe('configuration with routes', () => {
  it('a file without routes is one route named default on listen', async () => {
    const config = await loadConfig(
      await configFile(`
listen: { port: 8085 }
upstream: { url: https://api.example.test/v1 }
token:
  url: https://idp.example.test/token
  credentials: { authorizationFile: /run/secrets/auth }
`),
      {},
    );
    expect(config.routes).toHaveLength(1);
    expect(config.routes[0]).toMatchObject({
      name: 'default',
      listen: { host: '127.0.0.1', port: 8085 },
      upstream: { url: 'https://api.example.test/v1' },
      rateLimit: { perSecond: 6 },
    });
    expect(config.routes[0]?.token).toBe(config.token);
  });

  it('gives each route its blocks with the defaults, and the top-level host as default host', async () => {
    const config = await loadConfig(await configFile(TWO_ROUTES), {});
    expect(config.token).toBeUndefined();
    expect(config.upstream).toBeUndefined();
    const [billing, crm] = config.routes;
    expect(billing).toMatchObject({
      name: 'billing',
      listen: { host: '127.0.0.2', port: 8081 },
      upstream: { url: 'https://billing.example.test/v2', timeout: 30_000 },
      token: { authMethod: 'client_secret_basic', refreshAt: 0.8 },
      rateLimit: { perSecond: 2, burst: 1, window: { max: 2000 } },
    });
    expect(crm).toMatchObject({
      name: 'crm',
      listen: { host: '0.0.0.0', port: 8082 },
      rateLimit: { perSecond: 6 },
    });
    expect(Object.isFrozen(crm?.rateLimit.window)).toBe(true);
  });

  it('overrides a route key from M2M_PROXY_ROUTES_<NAME>_<PATH>', async () => {
    const text = TWO_ROUTES.replace('name: crm', 'name: crm-eu');
    expect(routeEnvName('crm-eu', ['upstream', 'url'])).toBe(
      'M2M_PROXY_ROUTES_CRM_EU_UPSTREAM_URL',
    );
    const config = await loadConfig(await configFile(text), {
      M2M_PROXY_ROUTES_CRM_EU_UPSTREAM_URL: 'https://crm2.example.test/api',
      M2M_PROXY_ROUTES_BILLING_RATELIMIT_PERSECOND: '9',
      M2M_PROXY_ROUTES_BILLING_LISTEN_PORT: '9181',
    });
    expect(config.routes[1]?.upstream.url).toBe('https://crm2.example.test/api');
    expect(config.routes[0]?.rateLimit.perSecond).toBe(9);
    expect(config.routes[0]?.listen.port).toBe(9181);
  });

  it('names the environment variable of a bad route override', async () => {
    const list = await problems(TWO_ROUTES, { M2M_PROXY_ROUTES_CRM_RATELIMIT_BURST: 'x' });
    expect(list).toEqual([
      'M2M_PROXY_ROUTES_CRM_RATELIMIT_BURST (environment): routes[1].rateLimit.burst: must be an integer of at least 1',
    ]);
  });

  it('lists every route error at once, each with its route index and line', async () => {
    const list = await problems(`
admin: { port: 9090 }
routes:
  - name: Billing
    listen: { port: 9090 }
    upstream: { url: ftp://billing.example.test }${TOKEN}
  - name: crm
    listen: { port: 70000 }
    upstream: { url: https://crm.example.test }
    token: { credentials: { authorizationFile: /x } }
    rateLimit: { perSecnd: 2 }
`);
    expect(list).toEqual([
      'FILE:4:5: routes[0].name: must be a lower-case name matching ^[a-z][a-z0-9-]{0,31}$',
      'FILE:6:17: routes[0].upstream.url: must be an absolute http or https URL',
      'FILE:11:15: routes[1].listen.port: must be an integer between 0 and 65535',
      'FILE:13:5: routes[1].token.url: is required',
      'FILE:14:18: routes[1].rateLimit.perSecnd: unknown key (expected one of perSecond, burst, window, queue, shared)',
    ]);
  });

  it('refuses duplicate names and ports, the admin port, and cross-key rules per route', async () => {
    const list = await problems(`
admin: { port: 9090 }
routes:
  - name: billing
    listen: { port: 8081 }
    upstream: { url: https://billing.example.test }${TOKEN}
  - name: billing
    listen: { port: 8081 }
    upstream: { url: https://u:p@crm.example.test }${TOKEN}
  - name: crm
    listen: { port: 9090 }
    upstream: { url: https://crm.example.test }${TOKEN}
      retry: { min: 10s, max: 1s }
`);
    expect(list).toEqual([
      'FILE:10:5: routes[1].name: "billing" is already routes[0]\'s name',
      "FILE:11:15: routes[1].listen.port: 8081 is already routes[0]'s port",
      'FILE:12:17: routes[1].upstream.url: must not contain a user or password (put credentials in files)',
      'FILE:17:15: routes[2].listen.port: 9090 is the admin port (admin.port)',
      'FILE:22:16: routes[2].token.retry.min: must not be greater than token.retry.max',
    ]);
  });

  it('refuses routes together with a top-level upstream, token, rateLimit or listen.port', async () => {
    const list = await problems(`
listen: { port: 8080 }
upstream: { url: https://api.example.test }
token: { url: https://idp.example.test/token }
rateLimit: { perSecond: 1 }
routes:
  - name: billing
    listen: { port: 8081 }
    upstream: { url: https://billing.example.test }${TOKEN}
`);
    expect(list).toEqual([
      'FILE:2:11: listen.port: cannot be used together with routes: each route has its own listen.port',
      'FILE:3:1: upstream: cannot be used together with routes: each route has its own (move it into the routes)',
      'FILE:4:1: token: cannot be used together with routes: each route has its own (move it into the routes)',
      'FILE:5:1: rateLimit: cannot be used together with routes: each route has its own (move it into the routes)',
    ]);
  });

  it('refuses an empty list and routes sharing a Redis key with different budgets', async () => {
    expect(await problems('routes: []\n')).toEqual(['FILE:1:1: routes: must be a non-empty list']);
    const list = await problems(`
routes:
  - name: a
    listen: { port: 8081 }
    upstream: { url: https://a.example.test }${TOKEN}
    rateLimit: { perSecond: 2, shared: { redis: "redis://r:6379", key: k } }
  - name: b
    listen: { port: 8082 }
    upstream: { url: https://b.example.test }${TOKEN}
    rateLimit: { perSecond: 3, shared: { redis: "redis://r:6379", key: k } }
`);
    expect(list).toEqual([
      'FILE:16:5: routes[1].rateLimit: shares rateLimit.shared.key "k" with routes[0] and must then have the same perSecond, burst, window and shared settings',
    ]);
  });

  it('groups routes by equal token blocks (YAML anchors share one)', async () => {
    const config = await loadConfig(
      await configFile(`
routes:
  - name: a
    listen: { port: 8081 }
    upstream: { url: https://a.example.test }
    token: &shared
      url: https://idp.example.test/token
      credentials: { authorizationFile: /run/secrets/one }
      scope: read
  - name: b
    listen: { port: 8082 }
    upstream: { url: https://b.example.test }
    token: *shared
  - name: c
    listen: { port: 8083 }
    upstream: { url: https://c.example.test }
    token:
      url: https://idp.example.test/token
      credentials: { authorizationFile: /run/secrets/one }
      scope: write
`),
      {},
    );
    expect(tokenGroups(config).map((g) => g.routes.map((r) => r.name))).toEqual([
      ['a', 'b'],
      ['c'],
    ]);
  });
});
