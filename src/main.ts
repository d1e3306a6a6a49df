#!/usr/bin/env node
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startApp } from './app.js';
import type { Config } from './config/config.js';
import { formatDuration } from './config/duration.js';
import { ConfigError, loadConfig } from './config/load.js';
import { describeTracing, resolveTracing, type TracingSettings } from './config/tracing.js';
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
  let credentials: ClientCredentials;
  let redisPassword: string | undefined;
  let tracing: TracingSettings | undefined;
  try {
    config = await loadConfig(file, env);
    tracing = resolveTracing(config.tracing, env);
    credentials = await readCredentials(config.token, env);
    const passwordFile = config.rateLimit.shared?.passwordFile;
    if (passwordFile) redisPassword = readRedisPassword(passwordFile);
  } catch (err) {
    if (err instanceof ConfigError || err instanceof CredentialError) {
      process.stderr.write(
        `${err instanceof CredentialError ? `invalid credentials:\n  ${err.message}` : err.message}\n`,
      );
      return EXIT.config;
    }
    throw err;
  }

  if (args.check) {
    process.stdout.write(summary(file, config, credentials, tracing));
    return EXIT.ok;
  }

  const logger = createLogger(config.log.level);
  const app = await startApp({ config, credentials, redisPassword, env, logger, tracing });
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
  credentials: ClientCredentials,
  tracing: TracingSettings | undefined,
): string {
  const rl = c.rateLimit;
  const creds = Object.entries(describeCredentials(credentials))
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
  const lines = [
    `configuration OK: ${file}`,
    `  listen:      ${c.listen.host}:${c.listen.port}   admin: ${c.admin.host}:${c.admin.port}`,
    `  upstream:    ${c.upstream.url} (timeout ${formatDuration(c.upstream.timeout)}${c.upstream.caFile ? `, CA ${c.upstream.caFile}` : ''})`,
    `  token:       ${c.token.url} (${c.token.authMethod}; renew at ${c.token.refreshAt} of the lifetime, ≥ ${formatDuration(c.token.minRemaining)} before expiry)`,
    `  credentials: ${creds}`,
    `  pacing:      ${rl.perSecond > 0 ? `${rl.perSecond}/s burst ${rl.burst}` : 'no rate limit'}; ${rl.window.max > 0 ? `${rl.window.max} per ${formatDuration(rl.window.length)}` : 'no window'}; queue ${rl.queue.max}, ${formatDuration(rl.queue.timeout)}`,
    `  logs:        level ${c.log.level}; access log ${c.log.access ? 'on' : 'off'}; audit events on`,
    `  tracing:     ${describeTracing(tracing)}`,
    `  shared:      ${rl.shared ? `${rl.shared.redis} key ${rl.shared.key} (fallback ${rl.shared.fallback}${rl.shared.passwordFile ? ', password from file' : ''})` : 'off (pacing per process)'}`,
  ];
  return `${lines.join('\n')}\n`;
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
