import type { Config } from './config.js';
import { ConfigError } from './load.js';

/**
 * How spans are sampled. `parentBased`: a request that arrives with a W3C `traceparent` follows
 * its caller's decision (sampled or not) and only requests that start a trace are sampled at
 * `ratio`; otherwise every request is sampled at `ratio`, whatever its caller decided.
 */
export interface SamplerSettings {
  readonly parentBased: boolean;
  /** 0 = never, 1 = always, in between: that share of trace ids. */
  readonly ratio: number;
}

/** Tracing as resolved from `tracing.*` and the standard `OTEL_*` variables; absent = off. */
export interface TracingSettings {
  /** The OTLP/HTTP traces URL spans are posted to (ends in `/v1/traces` unless given in full). */
  readonly url: string;
  readonly serviceName: string;
  readonly sampler: SamplerSettings;
  /** Where each value came from, for `--check` and the start-up line. */
  readonly sources: { readonly url: string; readonly sampler: string };
}

/** `service.name` of the spans when `OTEL_SERVICE_NAME` is not set. */
const DEFAULT_SERVICE_NAME = 'm2m-proxy';

/** The OpenTelemetry default sampler (`parentbased_always_on`). */
const DEFAULT_SAMPLER: SamplerSettings = { parentBased: true, ratio: 1 };

/** `OTEL_TRACES_SAMPLER` values (OpenTelemetry SDK environment variable specification). */
const SAMPLERS: Record<string, { parentBased: boolean; ratio?: number }> = {
  always_on: { parentBased: false, ratio: 1 },
  always_off: { parentBased: false, ratio: 0 },
  traceidratio: { parentBased: false },
  parentbased_always_on: { parentBased: true, ratio: 1 },
  parentbased_always_off: { parentBased: true, ratio: 0 },
  parentbased_traceidratio: { parentBased: true },
};

/**
 * Resolves tracing from the configuration and the environment. The `tracing.*` keys (from the
 * file or `M2M_PROXY_TRACING_*`) win over the standard variables, which fill in what they leave
 * unset: the endpoint from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
 * `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`); the sampler from `OTEL_TRACES_SAMPLER` and
 * `OTEL_TRACES_SAMPLER_ARG`; the service name from `OTEL_SERVICE_NAME`. Returns `undefined`
 * (tracing off) when no endpoint is configured anywhere. Throws `ConfigError` listing every
 * invalid variable: a typo must not silently switch tracing off or sample everything.
 */
export function resolveTracing(
  tracing: Config['tracing'],
  env: Readonly<Record<string, string | undefined>>,
): TracingSettings | undefined {
  const problems: string[] = [];
  const get = (name: string) => {
    const value = env[name]?.trim();
    return value === undefined || value === '' ? undefined : value;
  };
  const problem = (name: string, message: string) =>
    problems.push(`${name} (environment): ${message}`);

  let url: string | undefined;
  let urlSource = '';
  if (tracing.endpoint) {
    url = tracesUrl(tracing.endpoint);
    urlSource = 'tracing.endpoint';
  } else {
    for (const [name, full] of [
      ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', true],
      ['OTEL_EXPORTER_OTLP_ENDPOINT', false],
    ] as const) {
      const value = get(name);
      if (value === undefined) continue;
      const why = invalidEndpoint(value);
      if (why) problem(name, why);
      else if (url === undefined) {
        url = full ? value : tracesUrl(value);
        urlSource = name;
      }
    }
  }

  let sampler = DEFAULT_SAMPLER;
  let samplerSource = 'default (parentbased_always_on)';
  const samplerName = get('OTEL_TRACES_SAMPLER');
  const samplerArg = get('OTEL_TRACES_SAMPLER_ARG');
  if (tracing.sampleRatio !== undefined) {
    sampler = { parentBased: true, ratio: tracing.sampleRatio };
    samplerSource = 'tracing.sampleRatio';
  } else if (samplerName !== undefined) {
    const known = SAMPLERS[samplerName.toLowerCase()];
    if (!known) {
      problem('OTEL_TRACES_SAMPLER', `must be one of ${Object.keys(SAMPLERS).join(', ')}`);
    } else {
      let ratio = known.ratio;
      if (ratio === undefined) {
        const arg = samplerArg === undefined ? 1 : Number(samplerArg);
        if (!Number.isFinite(arg) || arg < 0 || arg > 1)
          problem('OTEL_TRACES_SAMPLER_ARG', 'must be a number between 0 and 1');
        ratio = arg;
      }
      sampler = { parentBased: known.parentBased, ratio };
      samplerSource = `OTEL_TRACES_SAMPLER=${samplerName.toLowerCase()}`;
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  if (url === undefined) return undefined;
  return {
    url,
    serviceName: get('OTEL_SERVICE_NAME') ?? DEFAULT_SERVICE_NAME,
    sampler,
    sources: { url: urlSource, sampler: samplerSource },
  };
}

/** Why an endpoint from the environment cannot be used, or `undefined` when it can. */
function invalidEndpoint(value: string): string | undefined {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    return 'must be an absolute http or https URL';
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    return 'must be an absolute http or https URL';
  // Same rule as every other URL of the configuration: secrets belong in files, not in URLs.
  if (u.username || u.password || u.search || u.hash)
    return 'must not contain credentials, a query or a fragment';
  return undefined;
}

/**
 * The traces URL of a collector's base URL: `http://collector:4318` → `…/v1/traces`, as the
 * OTLP exporter specification derives it from `OTEL_EXPORTER_OTLP_ENDPOINT`. A URL that already
 * ends in `/v1/traces` is kept, so both forms work in `tracing.endpoint`.
 */
export function tracesUrl(base: string): string {
  const u = new URL(base);
  if (!u.pathname.endsWith('/v1/traces'))
    u.pathname = `${u.pathname.replace(/\/+$/, '')}/v1/traces`;
  return u.toString();
}

/** One line for `--check` and the start-up log: what tracing will do, no secret in it. */
export function describeTracing(settings: TracingSettings | undefined): string {
  if (!settings) return 'off (no OTLP endpoint configured)';
  const { sampler } = settings;
  const ratio = `${sampler.ratio}`;
  return `${settings.url} (from ${settings.sources.url}); service ${settings.serviceName}; sampling ${sampler.parentBased ? `parent-based, ${ratio} of new traces` : `${ratio} of all requests`} (${settings.sources.sampler})`;
}
