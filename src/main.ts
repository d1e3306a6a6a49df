#!/usr/bin/env node
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startApp, tokenGroups } from './app.js';
import type { Config, RouteConfig } from './config/config.js';
import { formatDuration } from './config/duration.js';
import { ConfigError, loadConfig } from './config/load.js';
import {
  type ClientCredentials,
  CredentialError,
  describeCredentials,
  readCredentials,
  readRedisPassword,
} from './credentials/credentials.js';
import { createLogger } from './log/logger.js';

/** Exit statuses of CONTRACT.md, "Command line". */
const EXIT = { ok: 0, unexpected: 1, config: 2 } as const;

const USAGE = 'usage: m2m-proxy [--config FILE] [--check]';

/**
 * The command line. The only module that reads `process.env` and `process.argv`: the rest
 * receives the validated, frozen configuration.
 */
async function main(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  let args: {
    config?: string | undefined;
    check?: boolean | undefined;
    help?: boolean | undefined;
  };
  try {
    args = parseArgs({
      args: [...argv],
      options: {
        config: { type: 'string' },
        check: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }).values;
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return EXIT.config;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return EXIT.ok;
  }
  const file = resolve(args.config ?? env.M2M_PROXY_CONFIG ?? 'config/m2m-proxy.yaml');

  let config: Config;
  try {
    config = await loadConfig(file, env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      return EXIT.config;
    }
    throw err;
  }
  // Every token group's credentials and every Redis password, each failure named by its routes.
  const single = config.token !== undefined;
  const credentials = new Map<string, ClientCredentials>();
  const redisPasswords = new Map<string, string>();
  const problems: string[] = [];
  const where = (routes: readonly RouteConfig[]) =>
    single
      ? ''
      : `${routes.map((r) => `routes[${config.routes.indexOf(r)}] (${r.name})`).join(', ')}: `;
  for (const group of tokenGroups(config)) {
    try {
      credentials.set(group.key, await readCredentials(group.token, env));
    } catch (err) {
      if (!(err instanceof CredentialError)) throw err;
      problems.push(`${where(group.routes)}${err.message}`);
    }
  }
  for (const route of config.routes) {
    const passwordFile = route.rateLimit.shared?.passwordFile;
    if (!passwordFile || redisPasswords.has(passwordFile)) continue;
    try {
      redisPasswords.set(passwordFile, readRedisPassword(passwordFile));
    } catch (err) {
      if (!(err instanceof CredentialError)) throw err;
      problems.push(`${where([route])}${err.message}`);
    }
  }
  if (problems.length > 0) {
    process.stderr.write(`invalid credentials:\n${problems.map((p) => `  ${p}`).join('\n')}\n`);
    return EXIT.config;
  }

  if (args.check) {
    process.stdout.write(summary(file, config, credentials));
    return EXIT.ok;
  }

  const logger = createLogger(config.log.level);
  const app = await startApp({ config, credentials, redisPasswords, env, logger });
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

/** The `--check` report: what will be used, never a secret (credentials show only their form). */
function summary(
  file: string,
  c: Config,
  credentials: ReadonlyMap<string, ClientCredentials>,
): string {
  const groups = tokenGroups(c);
  const lines = [`configuration OK: ${file}`];
  if (c.token !== undefined) {
    const [route] = c.routes as [RouteConfig];
    lines.push(
      `  listen:      ${route.listen.host}:${route.listen.port}   admin: ${c.admin.host}:${c.admin.port}`,
      ...routeSummary(route, credentials.get(groups[0]?.key ?? ''), '  '),
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
    `upstream:    ${upstream.url} (timeout ${formatDuration(upstream.timeout)}${upstream.caFile ? `, CA ${upstream.caFile}` : ''})`,
    `token:       ${token.url} (${token.authMethod}; renew at ${token.refreshAt} of the lifetime, ≥ ${formatDuration(token.minRemaining)} before expiry)`,
    `credentials: ${creds}`,
    `pacing:      ${rl.perSecond > 0 ? `${rl.perSecond}/s burst ${rl.burst}` : 'no rate limit'}; ${rl.window.max > 0 ? `${rl.window.max} per ${formatDuration(rl.window.length)}` : 'no window'}; queue ${rl.queue.max}, ${formatDuration(rl.queue.timeout)}`,
    `shared:      ${rl.shared ? `${rl.shared.redis} key ${rl.shared.key} (fallback ${rl.shared.fallback}${rl.shared.passwordFile ? ', password from file' : ''})` : 'off (pacing per process)'}`,
  ].map((line) => indent + line);
}

main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
    // Undici keep-alive sockets and watchers are closed by shutdown; exit explicitly anyway so a
    // stray handle cannot keep a terminated pod alive past its grace period.
    if (code === EXIT.ok) setImmediate(() => process.exit(code));
  },
  (err: unknown) => {
    // Only the message and stack: an error object could carry request options with headers.
    process.stderr.write(
      `m2m-proxy: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : 'unknown'}\n`,
    );
    process.exit(EXIT.unexpected);
  },
);
