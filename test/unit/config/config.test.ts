import { describe, expect, it } from 'vitest';
import { displayUrl } from '../../../src/config/config.js';
import { parseDuration } from '../../../src/config/duration.js';
import { envName, loadConfig } from '../../../src/config/load.js';
import { configFile, problems } from './helpers.js';

const MINIMAL = `
upstream: { url: https://api.example.test/v1 }
token:
  url: https://idp.example.test/token
  credentials: { authorizationFile: /run/secrets/auth }
`;

describe('configuration', () => {
  it('fills every default from the contract', async () => {
    const config = await loadConfig(await configFile(MINIMAL), {});
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(config.admin).toEqual({ host: '0.0.0.0', port: 9090 });
    expect(config.upstream?.timeout).toBe(30_000);
    expect(config.token).toMatchObject({
      authMethod: 'client_secret_basic',
      timeout: 10_000,
      refreshAt: 0.8,
      minRemaining: 30_000,
      retry: { min: 1000, max: 60_000 },
      params: {},
    });
    expect(config.rateLimit).toEqual({
      perSecond: 6,
      burst: 1,
      window: { max: 2000, length: 300_000 },
      queue: { max: 1000, timeout: 30_000 },
    });
    expect(config.limits).toEqual({
      connections: 1024,
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
      replayBytes: 16 * 1024 * 1024,
    });
    expect(config.log.level).toBe('info');
    expect(config.shutdown.timeout).toBe(25_000);
    expect(Object.isFrozen(config.rateLimit?.window)).toBe(true);
  });

  it('reports every error at once with file, line, column and dotted key', async () => {
    const found = await problems(`
listen: { port: 80800 }
upstream:
  url: ftp://api.example.test
  timeout: 30
token:
  url: https://idp.example.test/token
  refreshAt: 1.5
rateLimit:
  perSecond: -1
  windw: { max: 10 }
`);
    expect(found).toEqual([
      'FILE:2:11: listen.port: must be an integer between 0 and 65535',
      'FILE:4:3: upstream.url: must be an absolute http or https URL',
      'FILE:5:3: upstream.timeout: must be a duration with a unit, like 500ms, 30s, 5m or 6h',
      'FILE:8:3: token.refreshAt: must be a positive number of at most 1',
      'FILE:10:3: rateLimit.perSecond: must be a number of at least 0',
      'FILE:11:3: rateLimit.windw: unknown key (expected one of perSecond, burst, window, queue, shared)',
    ]);
  });

  it('names a missing required key without a line', async () => {
    expect(await problems('log: { level: info }\n')).toEqual([
      'FILE: upstream.url: is required',
      'FILE: token.url: is required',
    ]);
  });

  it('refuses unknown keys at the top level and in sections', async () => {
    const found = await problems(`${MINIMAL}\nlisten: { hots: 0.0.0.0 }\nlogs: {}\n`);
    expect(found).toHaveLength(2);
    expect(found[0]).toMatch(/^FILE:\d+:\d+: listen\.hots: unknown key/);
    expect(found[1]).toMatch(/^FILE:\d+:\d+: logs: unknown key/);
  });

  it('reports YAML syntax errors with their position', async () => {
    const found = await problems('upstream: { url: [\n');
    expect(found[0]).toMatch(/^FILE:\d+:\d+: /);
  });

  it('lets the environment override scalar keys and wins over the file', async () => {
    const env = {
      [envName(['upstream', 'url'])]: 'http://127.0.0.1:1234/base',
      M2M_PROXY_RATELIMIT_PERSECOND: '2.5',
      M2M_PROXY_RATELIMIT_WINDOW_LENGTH: '1m',
      M2M_PROXY_TOKEN_CREDENTIALS_CLIENTIDFILE: '/x/id',
      M2M_PROXY_TOKEN_CREDENTIALS_CLIENTSECRETFILE: '/x/secret',
      M2M_PROXY_TOKEN_CREDENTIALS_AUTHORIZATIONFILE: '',
      // A Kubernetes service-link variable for a Service named m2m-proxy: ignored, not an error.
      M2M_PROXY_PORT: 'tcp://10.0.0.1:8080',
    };
    expect(envName(['rateLimit', 'perSecond'])).toBe('M2M_PROXY_RATELIMIT_PERSECOND');
    const file = await configFile(
      MINIMAL.replace('credentials: { authorizationFile: /run/secrets/auth }', ''),
    );
    const config = await loadConfig(file, env);
    expect(config.upstream?.url).toBe('http://127.0.0.1:1234/base');
    expect(config.rateLimit?.perSecond).toBe(2.5);
    expect(config.rateLimit?.window.length).toBe(60_000);
    expect(config.token?.credentials).toEqual({
      clientIdFile: '/x/id',
      clientSecretFile: '/x/secret',
    });
  });

  it('names the environment variable when an override is invalid', async () => {
    const found = await problems(MINIMAL, { M2M_PROXY_RATELIMIT_BURST: 'two' });
    expect(found).toEqual([
      'M2M_PROXY_RATELIMIT_BURST (environment): rateLimit.burst: must be an integer of at least 1',
    ]);
  });

  it('checks rules that span several keys', async () => {
    const found = await problems(`
upstream: { url: "https://user:pw@api.example.test/v1?x=1" }
token:
  url: https://idp.example.test/token
  authMethod: private_key_jwt
  credentials: { authorizationFile: /a, clientSecretFile: /b }
  retry: { min: 2m, max: 1m }
rateLimit:
  shared: { redis: "redis://:pw@redis:6379", key: k }
`);
    expect(found.map((p) => p.replace(/^FILE(:\d+:\d+)?: /, ''))).toEqual([
      'upstream.url: must not have a query or fragment',
      'upstream.url: must not contain a user or password (put credentials in files)',
      'token.credentials: use exactly one form: authorizationFile, clientIdFile + clientSecretFile, or clientIdFile + privateKeyFile',
      'token.credentials.clientIdFile: is required with clientSecretFile or privateKeyFile',
      'token.credentials.privateKeyFile: is required when token.authMethod is private_key_jwt',
      'token.retry.min: must not be greater than token.retry.max',
      'rateLimit.shared.redis: must not contain a user or password (use rateLimit.shared.passwordFile)',
    ]);
  });

  it('refuses credentials in any URL, and token.params that clash with built-in fields', async () => {
    const found = await problems(`
upstream: { url: "https://api.example.test/v1" }
token:
  url: "http://id:s3cr3t-in-url@idp.example.test/token?client_secret=s3cr3t-in-query&api-version=2"
  credentials: { authorizationFile: /run/secrets/auth }
  params: { grant_type: password, Scope: admin, tenant: acme }
rateLimit:
  shared: { redis: "redis://redis:6379/0?password=s3cr3t-redis", key: k }
`);
    expect(found.map((p) => p.replace(/^FILE(:\d+:\d+)?: /, ''))).toEqual([
      'token.url: must not contain a user or password (use token.credentials)',
      'token.url: must not carry the secret query parameter "client_secret" (use token.credentials)',
      'token.params.grant_type: is set by the proxy itself and cannot be overridden',
      'token.params.Scope: is set by the proxy itself and cannot be overridden (use token.scope)',
      'rateLimit.shared.redis: must not carry the secret query parameter "password" (use rateLimit.shared.passwordFile)',
    ]);
    expect(found.join('\n')).not.toMatch(/s3cr3t/);
  });

  it('refuses a YAML alias bomb in one line instead of expanding it', async () => {
    const bomb = [
      'a: &a ["x","x","x","x","x","x","x","x","x","x"]',
      ...Array.from({ length: 8 }, (_, i) => {
        const prev = String.fromCharCode(97 + i);
        const next = String.fromCharCode(98 + i);
        return `${next}: &${next} [${Array(10).fill(`*${prev}`).join(',')}]`;
      }),
    ].join('\n');
    const found = await problems(`${bomb}\n${MINIMAL}`);
    expect(found).toHaveLength(1);
    expect(found[0]).toMatch(/^FILE: .*alias/i);
  });

  it('prints URLs without userinfo, query or fragment', () => {
    expect(displayUrl('https://id:pw@idp.example.test/oauth2/token?client_secret=x#f')).toBe(
      'https://idp.example.test/oauth2/token',
    );
    expect(displayUrl('redis://:pw@redis:6379/0?password=x')).toBe('redis://redis:6379/0');
    expect(displayUrl('https://api.example.test')).toBe('https://api.example.test');
  });

  it('never echoes a value in an error message', async () => {
    const found = await problems(MINIMAL, { M2M_PROXY_LOG_LEVEL: 's3cr3t-value' });
    expect(found.join('\n')).not.toContain('s3cr3t-value');
  });

  it('says so when the file cannot be read', async () => {
    await expect(loadConfig('/nonexistent/m2m.yaml', {})).rejects.toThrow(
      /cannot read the configuration file \(ENOENT\)/,
    );
  });
});

describe('durations', () => {
  it.each([
    ['500ms', 500],
    ['30s', 30_000],
    ['5m', 300_000],
    ['6h', 21_600_000],
    ['1.5s', 1500],
  ])('parses %s', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['30', '5 minutes', '-1s', '', 's', '1d'])('refuses %j', (text) => {
    expect(parseDuration(text)).toBeUndefined();
  });
});
