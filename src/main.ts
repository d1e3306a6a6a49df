#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { type App, ListenError, startApp, tokenGroups } from './app.js';
import { type Config, displayUrl, type RouteConfig } from './config/config.js';
import { formatDuration } from './config/duration.js';
import { ConfigError, loadConfig } from './config/load.js';
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
import { createLogger } from './log/logger.js';
import { readCaFile } from './proxy/forward.js';

/** Exit statuses (docs/behaviour.md, "Command line"). */
const EXIT = { ok: 0, unexpected: 1, config: 2 } as const;

const USAGE = 'usage: m2m-proxy [--config FILE] [--check] [--version]';

/** The version in the package's `package.json` (beside `dist/` and `src/`, also in the image). */
function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      version?: unknown;
    };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

/**
 * The command line. The only module that reads `process.env` and `process.argv`: the rest
 * receives the validated, frozen configuration.
 */
async function main(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  let args: {
    config?: string | undefined;
    check?: boolean | undefined;
    help?: boolean | undefined;
    version?: boolean | undefined;
  };
  try {
    args = parseArgs({
      args: [...argv],
      options: {
        config: { type: 'string' },
        check: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
      strict: true,
    }).values;
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
    return EXIT.config;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return EXIT.ok;
  }
  if (args.version) {
    process.stdout.write(`m2m-proxy ${packageVersion()}\n`);
    return EXIT.ok;
  }
  const file = resolve(args.config ?? env.M2M_PROXY_CONFIG ?? 'config/m2m-proxy.yaml');

  const loaded = await load(file, env);
  if ('problems' in loaded) {
    process.stderr.write(loaded.problems);
    return EXIT.config;
  }
  const { config, credentials, redisPasswords, tracing } = loaded;
  const exposed = worldReadable([
    ...new Set(
      config.routes.flatMap((route) => [
        ...credentialFiles(route.token.credentials),
        ...(route.rateLimit.shared?.passwordFile ? [route.rateLimit.shared.passwordFile] : []),
      ]),
    ),
  ]);

  if (args.check) {
    process.stdout.write(summary(file, config, credentials, exposed, tracing));
    return EXIT.ok;
  }

  const logger = createLogger(config.log.level);
  if (exposed.length > 0) {
    logger.warn(
      { event: 'secret_files_world_readable', files: exposed },
      'secret files are readable by every user of the host: mount them with mode 0400 or 0440',
    );
  }
  let app: App;
  try {
    app = await startApp({
      config,
      credentials,
      redisPasswords,
      env,
      logger,
      tracing,
      version: packageVersion(),
    });
  } catch (err) {
    if (!(err instanceof ListenError)) throw err;
    process.stderr.write(`cannot listen:\n  ${err.message}\n`);
    return EXIT.config;
  }
  await new Promise<void>((done) => {
    const stop = (signal: NodeJS.Signals) => {
      logger.info({ event: 'signal', signal });
      app.shutdown().then(done, done);
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  return EXIT.ok;
}

/** Everything start-up reads, or every problem found in it (configuration and files together). */
async function load(
  file: string,
  env: NodeJS.ProcessEnv,
): Promise<
  | {
      config: Config;
      credentials: Map<string, ClientCredentials>;
      redisPasswords: Map<string, string>;
      tracing: TracingSettings | undefined;
    }
  | { problems: string }
> {
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
      const read1 = await read(where(group.routes), () => readCredentials(group.token, env));
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
        await read(label, () => readCredentials(token as RouteConfig['token'], env));
      }
      const passwordFile = route?.rateLimit?.shared?.passwordFile;
      if (passwordFile) await read(label, () => readRedisPassword(passwordFile));
      const caFile = route?.upstream?.caFile;
      if (caFile) await read(label, () => readCaFile(caFile));
    }
  }
  if (config && configProblems.length === 0 && fileProblems.length === 0) {
    return { config, credentials, redisPasswords, tracing };
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
function summary(
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

main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
    // Undici keep-alive sockets and watchers are closed by shutdown; exit explicitly anyway so a
    // stray handle (a Redis client still connecting after a failed listen) cannot keep the
    // process alive.
    setImmediate(() => process.exit(code));
  },
  (err: unknown) => {
    // Only the message and stack: an error object could carry request options with headers.
    process.stderr.write(
      `m2m-proxy: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : 'unknown'}\n`,
    );
    process.exit(EXIT.unexpected);
  },
);
