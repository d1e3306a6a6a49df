import {
  duration,
  type Infer,
  type Issue,
  number,
  object,
  oneOf,
  string,
  stringRecord,
  url,
} from './schema.js';

const port = () => number({ integer: true, min: 0, max: 65535 });

/** The configuration file's shape and defaults (CONTRACT.md, "Configuration"). */
export const configSchema = object({
  listen: object({ host: string().default('127.0.0.1'), port: port().default(8080) }),
  admin: object({ host: string().default('0.0.0.0'), port: port().default(9090) }),
  upstream: object({
    url: url(['http:', 'https:']),
    timeout: duration({ positive: true }).default(30_000),
    caFile: string().optionalKey(),
  }),
  token: object({
    url: url(['http:', 'https:']),
    authMethod: oneOf([
      'client_secret_basic',
      'client_secret_post',
      'private_key_jwt',
    ] as const).default('client_secret_basic'),
    credentials: object({
      authorizationFile: string().optionalKey(),
      clientIdFile: string().optionalKey(),
      clientSecretFile: string().optionalKey(),
      privateKeyFile: string().optionalKey(),
      keyId: string().optionalKey(),
    }),
    scope: string().optionalKey(),
    audience: string().optionalKey(),
    resource: string().optionalKey(),
    params: stringRecord(),
    timeout: duration({ positive: true }).default(10_000),
    refreshAt: number({ positive: true, max: 1 }).default(0.8),
    minRemaining: duration().default(30_000),
    retry: object({
      min: duration({ positive: true }).default(1000),
      max: duration({ positive: true }).default(60_000),
    }),
  }),
  rateLimit: object({
    perSecond: number({ min: 0 }).default(6),
    burst: number({ integer: true, min: 1 }).default(1),
    window: object({
      max: number({ integer: true, min: 0 }).default(2000),
      length: duration({ positive: true }).default(300_000),
    }),
    queue: object({
      max: number({ integer: true, min: 0 }).default(1000),
      timeout: duration({ positive: true }).default(30_000),
    }),
    shared: object({
      redis: url(['redis:', 'rediss:']),
      passwordFile: string().optionalKey(),
      key: string(),
      fallback: number({ positive: true, max: 1 }).optionalKey(),
    }).optionalKey(),
  }),
  log: object({
    level: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const).default(
      'info',
    ),
  }),
  shutdown: object({ timeout: duration().default(25_000) }),
});

/** The validated, frozen configuration. Durations are in milliseconds. */
export type Config = NonNullable<Infer<typeof configSchema>>;

/**
 * Rules that span several keys. Each returns issues rather than throwing so that `--check` lists
 * them together with the per-key ones.
 */
export function crossCheck(config: Config): Issue[] {
  const issues: Issue[] = [];
  const { credentials, authMethod, retry } = config.token;
  const at = (...path: string[]) => ['token', 'credentials', ...path];

  const forms = [
    credentials.authorizationFile !== undefined,
    credentials.clientSecretFile !== undefined,
    credentials.privateKeyFile !== undefined,
  ].filter(Boolean).length;
  if (forms > 1) {
    issues.push({
      path: at(),
      message:
        'use exactly one form: authorizationFile, clientIdFile + clientSecretFile, or clientIdFile + privateKeyFile',
    });
  }
  if ((credentials.clientSecretFile || credentials.privateKeyFile) && !credentials.clientIdFile) {
    issues.push({
      path: at('clientIdFile'),
      message: 'is required with clientSecretFile or privateKeyFile',
    });
  }
  if (credentials.clientIdFile && forms === 0) {
    issues.push({
      path: at('clientIdFile'),
      message: 'needs clientSecretFile or privateKeyFile beside it',
    });
  }
  if (credentials.keyId && !credentials.privateKeyFile) {
    issues.push({ path: at('keyId'), message: 'is only used with privateKeyFile' });
  }
  if (authMethod === 'private_key_jwt' && forms > 0 && !credentials.privateKeyFile) {
    issues.push({
      path: at('privateKeyFile'),
      message: 'is required when token.authMethod is private_key_jwt',
    });
  }
  if (authMethod !== 'private_key_jwt' && credentials.privateKeyFile) {
    issues.push({
      path: ['token', 'authMethod'],
      message: 'must be private_key_jwt when a privateKeyFile is configured',
    });
  }
  if (retry.min > retry.max) {
    issues.push({
      path: ['token', 'retry', 'min'],
      message: 'must not be greater than token.retry.max',
    });
  }

  const upstream = new URL(config.upstream.url);
  if (upstream.search || upstream.hash) {
    issues.push({ path: ['upstream', 'url'], message: 'must not have a query or fragment' });
  }
  if (upstream.username || upstream.password) {
    issues.push({ path: ['upstream', 'url'], message: 'must not contain credentials' });
  }
  const shared = config.rateLimit.shared;
  if (shared && new URL(shared.redis).password) {
    issues.push({
      path: ['rateLimit', 'shared', 'redis'],
      message: 'must not contain a password (use rateLimit.shared.passwordFile)',
    });
  }
  return issues;
}
