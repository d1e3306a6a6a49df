import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { CHART_DIR, isPlainObject, mergeValues } from './renderer.js';

/**
 * values.schema.json is what makes `helm install` refuse bad values before anything is created.
 * Helm validates the merged values (defaults + -f files + --set); so does this test.
 */
const schema = JSON.parse(readFileSync(join(CHART_DIR, 'values.schema.json'), 'utf8'));
// strictTypes off: if/then sub-schemas name only the keywords they add, as Helm's validator allows.
const ajv = new Ajv({ allErrors: true, strict: true, strictTypes: false });
const validate = ajv.compile(schema);
const defaults = parse(readFileSync(join(CHART_DIR, 'values.yaml'), 'utf8'));
const ciFiles = readdirSync(join(CHART_DIR, 'ci')).filter((f) => f.endsWith('-values.yaml'));

/** Builds `{a: {b: value}}` from a dotted path. */
function at(path: string, value: unknown): Record<string, unknown> {
  return path
    .split('.')
    .reverse()
    .reduce<unknown>((acc, key) => ({ [key]: acc }), value) as Record<string, unknown>;
}

/** A valid route with `changes` laid over it (`undefined` removes a key). */
function route(changes: Record<string, unknown>): Record<string, unknown> {
  const base: Record<string, unknown> = {
    name: 'billing',
    port: 8081,
    upstream: { url: 'https://billing.example.com/v2' },
    token: { url: 'https://idp.example.com/token' },
    credentials: { existingSecret: 'billing-m2m', existingSecretKeys: { authorization: 'auth' } },
  };
  for (const [k, v] of Object.entries(changes)) {
    if (v === undefined) delete base[k];
    else base[k] = v;
  }
  return base;
}

function errorsFor(values: unknown): string {
  return validate(values) ? '' : ajv.errorsText(validate.errors);
}

describe('values.schema.json', () => {
  it('accepts values.yaml', () => {
    expect(errorsFor(defaults)).toBe('');
  });

  it.each(ciFiles)('accepts values.yaml with ci/%s', (file) => {
    const values = mergeValues(defaults, parse(readFileSync(join(CHART_DIR, 'ci', file), 'utf8')));
    expect(errorsFor(values)).toBe('');
  });

  it('accepts a valid route, and routes that set only what differs', () => {
    expect(errorsFor(mergeValues(defaults, { routes: [route({})] }))).toBe('');
    const full = route({
      host: '0.0.0.0',
      upstream: { url: 'https://billing.example.com/v2', timeout: '5s' },
      token: { url: 'https://i.example/t', authMethod: 'private_key_jwt', retry: { min: '2s' } },
      credentials: {
        existingSecret: 's',
        existingSecretKeys: { clientId: 'id', privateKey: 'tls.key' },
        keyId: 'k1',
      },
      rateLimit: {
        perSecond: 0,
        window: { max: 0 },
        shared: { enabled: true, redis: 'redis://r' },
      },
    });
    expect(errorsFor(mergeValues(defaults, { routes: [full, route({ name: 'crm' })] }))).toBe('');
  });

  it('describes every value of values.yaml (no value outside the schema)', () => {
    // additionalProperties: false everywhere values.yaml has fixed keys, so each leaf must be known.
    const walk = (value: unknown, node: Record<string, unknown>, path: string) => {
      if (!isPlainObject(value) || !node.properties) return;
      const props = node.properties as Record<string, Record<string, unknown>>;
      for (const [k, v] of Object.entries(value)) {
        expect(props[k], `${path}${k} is in the schema`).toBeDefined();
        walk(v, props[k] as Record<string, unknown>, `${path}${k}.`);
      }
    };
    walk(defaults, schema, '');
  });

  it.each([
    ['an unknown top-level key (typo)', at('upstreams', { url: 'https://x' })],
    ['an unknown nested key (typo)', at('rateLimit.perSecnd', 5)],
    ['a duration without a unit', at('upstream.timeout', '30')],
    ['a duration with a bad unit', at('token.minRemaining', '30 sec')],
    ['a number as a duration', at('shutdown.timeout', 25)],
    ['an unknown sidecar mode', at('sidecar.mode', 'ambient')],
    ['a sampling ratio above 1', at('tracing.sampleRatio', 2)],
    ['a sampling ratio as a string', at('tracing.sampleRatio', '0.2')],
    ['credentials in the tracing endpoint', at('tracing.endpoint', 'http://u:p@otel:4318')],
    ['a query in the tracing endpoint', at('tracing.endpoint', 'http://otel:4318/?key=x')],
    ['a string as log.access', at('log.access', 'yes')],
    ['an unknown auth method', at('token.authMethod', 'client_secret_jwt')],
    ['a non-http upstream URL', at('upstream.url', 'ftp://api.example.com')],
    ['a token URL without a scheme', at('token.url', 'idp.example.com/token')],
    ['a Redis URL that is http', at('rateLimit.shared.redis', 'http://redis:6379')],
    ['a negative rate', at('rateLimit.perSecond', -1)],
    ['a fractional burst', at('rateLimit.burst', 1.5)],
    ['a burst of 0', at('rateLimit.burst', 0)],
    ['a refreshAt above 1', at('token.refreshAt', 1.2)],
    ['a fallback of 0', at('rateLimit.shared.fallback', 0)],
    ['a port out of range', at('admin.port', 70000)],
    ['a port as a string', at('listen.port', '8080')],
    ['an unknown log level', at('log.level', 'verbose')],
    ['a probe on another path', at('probes.readiness.path', '/ready')],
    ['a Secret name with capitals', at('credentials.existingSecret', 'My_Secret')],
    ['a relative mount path', at('credentials.mountPath', 'secrets/m2m')],
    ['a non-string token param', at('token.params', { tenant: 1 })],
    ['an image digest that is not sha256', at('image.digest', 'md5:abc')],
    ['a latest example image', at('example.app.image', 'curlimages/curl:latest')],
    ['an example path without a slash', at('example.app.path', 'health')],
    ['an unknown pull policy', at('image.pullPolicy', 'Sometimes')],
    ['an unknown Service type', at('metricsService.type', 'ExternalName')],
    ['an auth-error ratio above 1', at('monitoring.prometheusRule.authErrors.ratio', 5)],
    [
      'an existing Secret together with inline credentials',
      mergeValues(at('credentials.existingSecret', 'mine'), at('credentials.inline.clientId', 'x')),
    ],
    ['the shared budget without a Redis URL', at('rateLimit.shared.enabled', true)],
    [
      'a PodMonitor and a ServiceMonitor',
      mergeValues(
        at('monitoring.podMonitor.enabled', true),
        at('monitoring.serviceMonitor.enabled', true),
      ),
    ],
    ['a route name with capitals', { routes: [route({ name: 'Billing' })] }],
    ['a route name longer than 32 characters', { routes: [route({ name: `r${'x'.repeat(32)}` })] }],
    ['a route port out of range', { routes: [route({ port: 70000 })] }],
    ['a route without a port', { routes: [route({ port: undefined })] }],
    ['a route without credentials', { routes: [route({ credentials: undefined })] }],
    ['a route without an upstream URL', { routes: [route({ upstream: { timeout: '5s' } })] }],
    ['an unknown key in a route (typo)', { routes: [route({ upstrem: { url: 'https://x' } })] }],
    [
      'a CA file in a route (upstream.ca is for every route)',
      { routes: [route({ upstream: { url: 'https://x.example', caFile: '/ca.pem' } })] },
    ],
    [
      "a route's own Redis password (rateLimit.shared.password is for every route)",
      { routes: [route({ rateLimit: { shared: { password: { existingSecret: 'r' } } } })] },
    ],
    [
      'a route duration without a unit',
      { routes: [route({ token: { url: 'https://i', timeout: '10' } })] },
    ],
    [
      'a route with an existing Secret and inline credentials',
      { routes: [route({ credentials: { existingSecret: 'a', inline: { clientId: 'x' } } })] },
    ],
  ])('refuses %s', (_what, bad) => {
    expect(errorsFor(mergeValues(defaults, bad))).not.toBe('');
  });
});
