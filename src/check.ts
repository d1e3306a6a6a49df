/**
 * Start-up's reading, shared by `--check` and a real start so that `--check` runs exactly the
 * path a start does: the configuration, then every file it names (credentials, Redis passwords,
 * CA bundles), every problem collected before anything is reported; and the `--check` report.
 */
import { type Config, displayUrl, type RouteConfig } from './config/config.js';
import { formatDuration } from './config/duration.js';
import {
  type EnvCredentials,
  type EnvironmentVariables,
  envCredentials,
} from './config/environment.js';
import { ConfigError, loadConfig } from './config/load.js';
import { tokenGroups } from './config/token-groups.js';
import { describeTracing, resolveTracing, type TracingSettings } from './config/tracing.js';
import {
  type ClientCredentials,
  CredentialError,
  credentialFiles,
  describeCredentials,
  readCredentials,
  readRedisPassword,
  worldReadable,
} from './credentials/credentials.js';
import { readCaFile } from './proxy/ca-file.js';

/** What start-up has read, ready to start the proxy with. */
export interface Loaded {
  config: Config;
  /** The credentials of each token group (`TokenGroup.key`). */
  credentials: Map<string, ClientCredentials>;
  /** Contents of each `rateLimit.shared.passwordFile`, by path. */
  redisPasswords: Map<string, string>;
  tracing: TracingSettings | undefined;
  /** Secret files readable by every user of the host (a warning, not an error). */
  exposed: string[];
  /** `M2M_PROXY_CLIENT_ID`/`_SECRET`, for the credential re-reads of a token without files. */
  envCredentials: EnvCredentials | undefined;
}

/**
 * Everything start-up reads, or every problem found in it (configuration and files together).
 * `env` reaches only the configuration's own readers (`loadConfig`, `resolveTracing`,
 * `envCredentials`).
 */
export async function load(
  file: string,
  env: EnvironmentVariables,
): Promise<Loaded | { problems: string }> {
  const fromEnv = envCredentials(env);
  const configProblems: string[] = [];
  const fileProblems: string[] = [];
  let config: Config | undefined;
  let partial: unknown;
  try {
    config = await loadConfig(file, env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    configProblems.push(...err.problems);
    partial = err.partial;
  }
  let tracing: TracingSettings | undefined;
  if (config) {
    try {
      tracing = resolveTracing(config.tracing, env);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      configProblems.push(...err.problems);
    }
  }
  /** Runs one file read; its problems are listed under `label` (the routes it belongs to). */
  const read = async <T>(label: string, run: () => T | Promise<T>): Promise<T | undefined> => {
    try {
      return await run();
    } catch (err) {
      if (!(err instanceof CredentialError || err instanceof ConfigError)) throw err;
      fileProblems.push(...err.problems.map((p) => label + p));
      return undefined;
    }
  };
  const credentials = new Map<string, ClientCredentials>();
  const redisPasswords = new Map<string, string>();
  const caFiles = new Set<string>();
  if (config) {
    const valid = config;
    const single = valid.token !== undefined;
    const where = (routes: readonly RouteConfig[]) =>
      single
        ? ''
        : `${routes.map((r) => `routes[${valid.routes.indexOf(r)}] (${r.name})`).join(', ')}: `;
    for (const group of tokenGroups(valid)) {
      const read1 = await read(where(group.routes), () => readCredentials(group.token, fromEnv));
      if (read1) credentials.set(group.key, read1);
    }
    for (const route of valid.routes) {
      const passwordFile = route.rateLimit.shared?.passwordFile;
      if (passwordFile && !redisPasswords.has(passwordFile)) {
        const password = await read(where([route]), () => readRedisPassword(passwordFile));
        if (password !== undefined) redisPasswords.set(passwordFile, password);
      }
      const caFile = route.upstream.caFile;
      if (caFile && !caFiles.has(caFile)) {
        caFiles.add(caFile);
        await read(where([route]), () => readCaFile(caFile));
      }
    }
  } else {
    // With configuration errors, the files it names are still read (from what could be decoded),
    // so that one run reports every problem.
    const source = partial as DeepPartial<Config> | undefined;
    const routes: Array<[string, DeepPartial<RouteConfig> | undefined]> = Array.isArray(
      source?.routes,
    )
      ? (source.routes as Array<DeepPartial<RouteConfig> | undefined>).map((r, i) => [
          `routes[${i}]: `,
          r,
        ])
      : [['', source as DeepPartial<RouteConfig> | undefined]];
    for (const [label, route] of routes) {
      const token = route?.token;
      if (token?.credentials && token.authMethod) {
        // Decoded sections always have their defaults: only keys with errors are missing.
        await read(label, () => readCredentials(token as RouteConfig['token'], fromEnv));
      }
      const passwordFile = route?.rateLimit?.shared?.passwordFile;
      if (passwordFile) await read(label, () => readRedisPassword(passwordFile));
      const caFile = route?.upstream?.caFile;
      if (caFile) await read(label, () => readCaFile(caFile));
    }
  }
  if (config && configProblems.length === 0 && fileProblems.length === 0) {
    const exposed = worldReadable([
      ...new Set(
        config.routes.flatMap((route) => [
          ...credentialFiles(route.token.credentials),
          ...(route.rateLimit.shared?.passwordFile ? [route.rateLimit.shared.passwordFile] : []),
        ]),
      ),
    ]);
    return { config, credentials, redisPasswords, tracing, exposed, envCredentials: fromEnv };
  }
  const section = (title: string, lines: string[]) =>
    lines.length > 0 ? `${title}\n${lines.map((l) => `  ${l}`).join('\n')}\n` : '';
  return {
    problems:
      section('invalid configuration:', configProblems) +
      section('invalid credentials or files:', fileProblems),
  };
}

/** A decoded configuration with any key possibly missing (what decoding left after errors). */
type DeepPartial<T> = { readonly [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

/** The `--check` report: what will be used, never a secret (credentials show only their form). */
export function summary(
  file: string,
  c: Config,
  credentials: ReadonlyMap<string, ClientCredentials>,
  exposed: readonly string[],
  tracing: TracingSettings | undefined,
): string {
  const groups = tokenGroups(c);
  const lines = [`configuration OK: ${file}`];
  const tail = [
    `  logs:        level ${c.log.level}; access log ${c.log.access ? 'on' : 'off'}; audit events on`,
    `  tracing:     ${describeTracing(tracing)}`,
    `  limits:      ${c.limits.connections} connections; headers within ${formatDuration(c.limits.headersTimeout)}, kept bodies within ${formatDuration(c.limits.bodyTimeout)}; ${c.limits.replayBytes} bytes of kept bodies`,
    ...exposed.map(
      (f) => `  warning:     ${f} is readable by every user of the host (use mode 0400 or 0440)`,
    ),
  ];
  if (c.token !== undefined) {
    const [route] = c.routes as [RouteConfig];
    lines.push(
      `  listen:      ${route.listen.host}:${route.listen.port}   admin: ${c.admin.host}:${c.admin.port}`,
      ...routeSummary(route, credentials.get(groups[0]?.key ?? ''), '  '),
      ...tail,
    );
    return `${lines.join('\n')}\n`;
  }
  lines.push(`  admin:       ${c.admin.host}:${c.admin.port}`, `  routes:      ${c.routes.length}`);
  for (const route of c.routes) {
    const group = groups.find((g) => g.routes.includes(route));
    const others = group?.routes.filter((r) => r !== route).map((r) => r.name) ?? [];
    lines.push(`  route ${route.name}: listen ${route.listen.host}:${route.listen.port}`);
    lines.push(...routeSummary(route, credentials.get(group?.key ?? ''), '    '));
    if (others.length > 0) lines.push(`    shares its token with: ${others.join(', ')}`);
  }
  lines.push(...tail);
  return `${lines.join('\n')}\n`;
}

/** One route's lines of the `--check` report. */
function routeSummary(
  route: RouteConfig,
  credentials: ClientCredentials | undefined,
  indent: string,
): string[] {
  const { upstream, token, rateLimit: rl } = route;
  const creds = Object.entries(credentials ? describeCredentials(credentials) : {})
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
  return [
    `upstream:    ${displayUrl(upstream.url)} (timeout ${formatDuration(upstream.timeout)}${upstream.caFile ? `, CA ${upstream.caFile}` : ''})`,
    `token:       ${displayUrl(token.url)} (${token.authMethod}; renew at ${token.refreshAt} of the lifetime, ≥ ${formatDuration(token.minRemaining)} before expiry)`,
    `credentials: ${creds}`,
    `pacing:      ${rl.perSecond > 0 ? `${rl.perSecond}/s burst ${rl.burst}` : 'no rate limit'}; ${rl.window.max > 0 ? `${rl.window.max} per ${formatDuration(rl.window.length)}` : 'no window'}; queue ${rl.queue.max}, ${formatDuration(rl.queue.timeout)}`,
    `shared:      ${rl.shared ? `${displayUrl(rl.shared.redis)} key ${rl.shared.key} (fallback ${rl.shared.fallback ?? '1 / replicas last seen'}${rl.shared.passwordFile ? ', password from file' : ''})` : 'off (pacing per process)'}`,
  ].map((line) => indent + line);
}
