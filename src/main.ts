#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { type App, startApp } from './app.js';
import { load, summary } from './check.js';
import { configFile } from './config/environment.js';
import { ListenError } from './listen.js';
import { createLogger } from './log/logger.js';

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
 * The command line: parses the arguments, hands the environment to the configuration's readers
 * (`check.ts`, `config/`) and starts or checks. The only module that reads `process.env` and
 * `process.argv`: the rest receives the validated, frozen configuration.
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
  const file = configFile(args.config, env);

  const loaded = await load(file, env);
  if ('problems' in loaded) {
    process.stderr.write(loaded.problems);
    return EXIT.config;
  }
  const { config, credentials, redisPasswords, tracing, exposed } = loaded;

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
      envCredentials: loaded.envCredentials,
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
