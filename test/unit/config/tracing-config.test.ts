import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../../src/config/load.js';
import { describeTracing, resolveTracing, tracesUrl } from '../../../src/config/tracing.js';

const MINIMAL = `
upstream: { url: https://api.example.test/v1 }
token:
  url: https://idp.example.test/token
  credentials: { authorizationFile: /run/secrets/auth }
`;

async function load(extra = '', env: Record<string, string> = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'm2m-tracing-'));
  const file = join(dir, 'm2m-proxy.yaml');
  await writeFile(file, MINIMAL + extra);
  return loadConfig(file, env);
}

function problems(fn: () => unknown): readonly string[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('log.access and tracing configuration', () => {
  it('is off by default: no access log, no tracing', async () => {
    const config = await load();
    expect(config.log.access).toBe(false);
    expect(config.tracing).toEqual({});
    expect(resolveTracing(config.tracing, {})).toBeUndefined();
    expect(describeTracing(undefined)).toMatch(/^off/);
  });

  it('reads log.access from the file and from M2M_PROXY_LOG_ACCESS', async () => {
    expect((await load('log: { access: true }\n')).log.access).toBe(true);
    expect((await load('', { M2M_PROXY_LOG_ACCESS: 'true' })).log.access).toBe(true);
    await expect(load('log: { access: yes please }\n')).rejects.toThrow(
      /log\.access: must be true or false/,
    );
  });

  it('turns tracing on with tracing.endpoint, appending /v1/traces to a base URL', async () => {
    const config = await load('tracing: { endpoint: http://collector:4318, sampleRatio: 0.25 }\n');
    expect(resolveTracing(config.tracing, {})).toEqual({
      url: 'http://collector:4318/v1/traces',
      serviceName: 'm2m-proxy',
      sampler: { parentBased: true, ratio: 0.25 },
      sources: { url: 'tracing.endpoint', sampler: 'tracing.sampleRatio' },
    });
    expect(tracesUrl('http://c:4318/otlp/')).toBe('http://c:4318/otlp/v1/traces');
    expect(tracesUrl('http://c:4318/v1/traces')).toBe('http://c:4318/v1/traces');
  });

  it('refuses a sampleRatio outside 0..1 and an endpoint with credentials or a query', async () => {
    await expect(load('tracing: { sampleRatio: 2 }\n')).rejects.toThrow(
      /tracing\.sampleRatio: must be a number between 0 and 1/,
    );
    await expect(load('tracing: { endpoint: "http://u:p@collector:4318" }\n')).rejects.toThrow(
      /tracing\.endpoint: must not contain credentials/,
    );
    await expect(load('tracing: { endpoint: "ftp://collector" }\n')).rejects.toThrow(
      /tracing\.endpoint: must be an absolute http or https URL/,
    );
  });

  it('falls back on the standard OTEL_* variables, the traces endpoint before the base one', () => {
    const env = {
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://base:4318',
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://traces:4318/custom/path',
      OTEL_SERVICE_NAME: 'billing-sidecar',
      OTEL_TRACES_SAMPLER: 'traceidratio',
      OTEL_TRACES_SAMPLER_ARG: '0.1',
    };
    expect(resolveTracing({}, env)).toEqual({
      url: 'http://traces:4318/custom/path',
      serviceName: 'billing-sidecar',
      sampler: { parentBased: false, ratio: 0.1 },
      sources: {
        url: 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
        sampler: 'OTEL_TRACES_SAMPLER=traceidratio',
      },
    });
    expect(resolveTracing({}, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://base:4318/' })?.url).toBe(
      'http://base:4318/v1/traces',
    );
    expect(
      resolveTracing(
        {},
        { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://b:4318', OTEL_TRACES_SAMPLER: 'always_off' },
      )?.sampler,
    ).toEqual({ parentBased: false, ratio: 0 });
  });

  it('lets tracing.* win over OTEL_* and keeps the service name from the environment', () => {
    const settings = resolveTracing(
      { endpoint: 'https://mine:4318', sampleRatio: 0.5 },
      {
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://other:4318',
        OTEL_TRACES_SAMPLER: 'always_on',
        OTEL_SERVICE_NAME: 'svc',
      },
    );
    expect(settings).toMatchObject({
      url: 'https://mine:4318/v1/traces',
      serviceName: 'svc',
      sampler: { parentBased: true, ratio: 0.5 },
    });
    expect(describeTracing(settings)).toContain('parent-based, 0.5 of new traces');
  });

  it('lists every invalid OTEL_* variable, named as an environment variable', () => {
    expect(
      problems(() =>
        resolveTracing(
          {},
          {
            OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318?token=abc',
            OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
            OTEL_TRACES_SAMPLER_ARG: '1.5',
          },
        ),
      ),
    ).toEqual([
      'OTEL_EXPORTER_OTLP_ENDPOINT (environment): must be an absolute http or https URL',
      'OTEL_TRACES_SAMPLER_ARG (environment): must be a number between 0 and 1',
    ]);
    expect(problems(() => resolveTracing({}, { OTEL_TRACES_SAMPLER: 'jaeger_remote' }))).toEqual([
      expect.stringMatching(/^OTEL_TRACES_SAMPLER \(environment\): must be one of always_on, /),
    ]);
    expect(
      problems(() =>
        resolveTracing({}, { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://u:p@c/v1/traces' }),
      ),
    ).toEqual([
      'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (environment): must not contain credentials, a query or a fragment',
    ]);
  });
});
