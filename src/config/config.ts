/*
 * Longer than the project's ~300 lines on purpose: the whole shape of the configuration file and
 * its cross-key rules in one place, key by key in the order of docs/configuration.md, so the
 * schema and the docs table can be compared side by side.
 */
import {
  boolean,
  duration,
  type Infer,
  type Issue,
  list,
  matching,
  number,
  object,
  oneOf,
  string,
  stringRecord,
  url,
} from './schema.js';

const port = () => number({ integer: true, min: 0, max: 65535 });

const upstream = object({
  url: url(['http:', 'https:']),
  timeout: duration({ positive: true }).default(30_000),
  caFile: string().optionalKey(),
});

const token = object({
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
});

const rateLimit = object({
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
});

const admin = object({ host: string().default('0.0.0.0'), port: port().default(9090) });
const log = object({
  level: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const).default(
    'info',
  ),
  /** One JSON line per request (`src/log/access.ts`). */
  access: boolean().default(false),
});
/** OpenTelemetry; resolved together with the `OTEL_*` variables by `resolveTracing`. */
const tracing = object({
  endpoint: url(['http:', 'https:']).optionalKey(),
  sampleRatio: number({ min: 0, max: 1 }).optionalKey(),
});
/**
 * What one process holds for its clients (docs/configuration.md, "Limits"): open connections
 * on the proxy ports, how long a client may take to send its headers and a kept (replayable)
 * body, and the memory all kept bodies may hold together.
 */
const limits = object({
  connections: number({ integer: true, min: 1 }).default(1024),
  headersTimeout: duration({ positive: true }).default(10_000),
  bodyTimeout: duration({ positive: true }).default(10_000),
  replayBytes: number({ integer: true, min: 0 }).default(16 * 1024 * 1024),
});
const shutdown = object({ timeout: duration().default(25_000) });

/** What a route's name must look like: it becomes a metric label and part of env names. */
export const ROUTE_NAME = /^[a-z][a-z0-9-]{0,31}$/;

/** The name of the one route of a file without `routes`. */
export const DEFAULT_ROUTE = 'default';

/** The configuration file's shape and defaults without `routes` (docs/configuration.md). */
export const configSchema = object({
  listen: object({ host: string().default('127.0.0.1'), port: port().default(8080) }),
  admin,
  upstream,
  token,
  rateLimit,
  limits,
  log,
  tracing,
  shutdown,
});

/** One entry of `routes`: the API-specific blocks of the single-API file, plus a name and a port. */
export const routeSchema = object({
  name: matching(ROUTE_NAME, 'a lower-case name matching ^[a-z][a-z0-9-]{0,31}$'),
  listen: object({ host: string().optionalKey(), port: port() }),
  upstream,
  token,
  rateLimit,
});

/**
 * The file's shape with `routes` (docs/configuration.md, "Several APIs"): the top-level `listen`
 * only gives the routes' default host, and `upstream`/`token`/`rateLimit` live in each route.
 */
export const routesConfigSchema = object({
  listen: object({ host: string().default('127.0.0.1') }),
  admin,
  routes: list(routeSchema),
  limits,
  log,
  tracing,
  shutdown,
});

/** The keys a file with `routes` must not have at the top level (each route has its own). */
export const ROUTE_KEYS = ['upstream', 'token', 'rateLimit'] as const;

type SingleApiFile = NonNullable<Infer<typeof configSchema>>;

/** Everything one route needs; durations in milliseconds. */
export interface RouteConfig {
  /** `default` for a file without `routes`; the `route` label and log field. */
  readonly name: string;
  readonly listen: { readonly host: string; readonly port: number };
  readonly upstream: SingleApiFile['upstream'];
  readonly token: SingleApiFile['token'];
  readonly rateLimit: SingleApiFile['rateLimit'];
}

/**
 * The validated, frozen configuration. Durations are in milliseconds. `routes` always holds at
 * least one route; a file without `routes` keeps its top-level `upstream`, `token` and
 * `rateLimit` too (they are its `default` route's).
 */
export interface Config {
  readonly listen: { readonly host: string; readonly port?: number };
  readonly admin: SingleApiFile['admin'];
  readonly limits: SingleApiFile['limits'];
  readonly log: SingleApiFile['log'];
  readonly tracing: SingleApiFile['tracing'];
  readonly shutdown: SingleApiFile['shutdown'];
  readonly routes: readonly RouteConfig[];
  readonly upstream?: RouteConfig['upstream'];
  readonly token?: RouteConfig['token'];
  readonly rateLimit?: RouteConfig['rateLimit'];
}

/**
 * Rules that span several keys. Each returns issues rather than throwing so that `--check` lists
 * them together with the per-key ones.
 */
export function crossCheck(config: Config): Issue[] {
  // A file without `routes` names its keys as before (`token.url`); a route's start `routes.<i>`.
  const single = config.token !== undefined;
  const issues = config.routes.flatMap((route, i) =>
    crossCheckRoute(route, single ? [] : ['routes', String(i)]),
  );
  if (!single) issues.push(...crossCheckRoutes(config));
  const endpoint = config.tracing.endpoint;
  if (endpoint) {
    const u = new URL(endpoint);
    if (u.username || u.password || u.search || u.hash) {
      issues.push({
        path: ['tracing', 'endpoint'],
        message: 'must not contain credentials, a query or a fragment',
      });
    }
  }
  return issues;
}

/** The rules between the keys of one route; `prefix` locates the route in the file. */
function crossCheckRoute(route: RouteConfig, prefix: readonly string[]): Issue[] {
  const issues: Issue[] = [];
  const { credentials, authMethod, retry } = route.token;
  const at = (...path: string[]) => [...prefix, 'token', 'credentials', ...path];

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
      path: [...prefix, 'token', 'authMethod'],
      message: 'must be private_key_jwt when a privateKeyFile is configured',
    });
  }
  if (retry.min > retry.max) {
    issues.push({
      path: [...prefix, 'token', 'retry', 'min'],
      message: 'must not be greater than token.retry.max',
    });
  }

  for (const key of Object.keys(route.token.params)) {
    if (BUILT_IN_PARAMS.has(key.toLowerCase())) {
      issues.push({
        path: [...prefix, 'token', 'params', key],
        message: `is set by the proxy itself and cannot be overridden${PARAM_HINT[key.toLowerCase()] ?? ''}`,
      });
    }
  }

  const upstream = new URL(route.upstream.url);
  if (upstream.search || upstream.hash) {
    issues.push({
      path: [...prefix, 'upstream', 'url'],
      message: 'must not have a query or fragment',
    });
  }
  issues.push(
    ...secretsInUrl([...prefix, 'upstream', 'url'], upstream, 'put credentials in files'),
    ...secretsInUrl([...prefix, 'token', 'url'], new URL(route.token.url), 'use token.credentials'),
  );
  const shared = route.rateLimit.shared;
  if (shared) {
    issues.push(
      ...secretsInUrl(
        [...prefix, 'rateLimit', 'shared', 'redis'],
        new URL(shared.redis),
        'use rateLimit.shared.passwordFile',
      ),
    );
  }
  return issues;
}

/**
 * The rules between routes: unique names and ports, no route on the admin port, and one budget
 * per shared key (routes drawing from the same Redis key must agree on what that budget is).
 */
function crossCheckRoutes(config: Config): Issue[] {
  const issues: Issue[] = [];
  const names = new Map<string, number>();
  const ports = new Map<number, number>();
  const keys = new Map<string, number>();
  config.routes.forEach((route, i) => {
    const at = (...path: string[]) => ['routes', String(i), ...path];
    const sameName = names.get(route.name);
    if (sameName === undefined) names.set(route.name, i);
    else
      issues.push({
        path: at('name'),
        message: `"${route.name}" is already routes[${sameName}]'s name`,
      });
    // Port 0 (any free port) cannot collide; it is for tests and tools that read the log.
    const port = route.listen.port;
    const samePort = ports.get(port);
    if (port !== 0 && samePort !== undefined) {
      issues.push({
        path: at('listen', 'port'),
        message: `${port} is already routes[${samePort}]'s port`,
      });
    } else ports.set(port, i);
    if (port !== 0 && port === config.admin.port) {
      issues.push({
        path: at('listen', 'port'),
        message: `${port} is the admin port (admin.port)`,
      });
    }
    const shared = route.rateLimit.shared;
    if (!shared) return;
    const first = keys.get(shared.key);
    if (first === undefined) {
      keys.set(shared.key, i);
      return;
    }
    const other = config.routes[first]?.rateLimit;
    if (other && !sameBudget(other, route.rateLimit)) {
      issues.push({
        path: at('rateLimit'),
        message: `shares rateLimit.shared.key "${shared.key}" with routes[${first}] and must then have the same perSecond, burst, window and shared settings`,
      });
    }
  });
  return issues;
}

/** Whether two `rateLimit` blocks describe the same shared budget (the queue may differ). */
function sameBudget(a: RouteConfig['rateLimit'], b: RouteConfig['rateLimit']): boolean {
  const budget = (r: RouteConfig['rateLimit']) =>
    JSON.stringify([r.perSecond, r.burst, r.window.max, r.window.length, r.shared]);
  return budget(a) === budget(b);
}

/** Form fields of the token request that the proxy sets from other keys (RFC 6749 §4.4.2, RFC 7521 §4.2). */
const BUILT_IN_PARAMS = new Set([
  'grant_type',
  'client_id',
  'client_secret',
  'client_assertion',
  'client_assertion_type',
  'scope',
  'audience',
  'resource',
]);
const PARAM_HINT: Record<string, string> = {
  scope: ' (use token.scope)',
  audience: ' (use token.audience)',
  resource: ' (use token.resource)',
};

/** Query parameters whose value is a secret; matched case-insensitively, `-` and `_` ignored. */
const SECRET_QUERY =
  /^(password|passwd|pwd|secret|clientsecret|token|accesstoken|apikey|key|auth|authorization|credentials?)$/;

/**
 * Secrets belong in files: a URL with userinfo or a secret-bearing query parameter is refused (it
 * would be printed by `--check`, logged, and kept in a ConfigMap).
 */
function secretsInUrl(path: string[], url: URL, hint: string): Issue[] {
  const issues: Issue[] = [];
  if (url.username || url.password) {
    issues.push({ path, message: `must not contain a user or password (${hint})` });
  }
  for (const name of new Set(url.searchParams.keys())) {
    if (SECRET_QUERY.test(name.toLowerCase().replace(/[-_]/g, ''))) {
      issues.push({
        path,
        message: `must not carry the secret query parameter "${name}" (${hint})`,
      });
    }
  }
  return issues;
}

/**
 * A URL as it may be printed or logged: scheme, host, port and path, without userinfo, query or
 * fragment (where secrets hide).
 */
export function displayUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname === '/' && !url.endsWith('/') ? '' : u.pathname}`;
  } catch {
    return '[invalid URL]';
  }
}
