/**
 * Helpers to run the built proxy (`dist/main.js`) as a real child process: start it with a
 * configuration, read its JSON log lines, stop it with a signal, run the CLI to completion, and
 * check that no secret reached its output.
 *
 * @example
 * ```ts
 * const proxy = await startProxy({ config: { listen: { port: await freePort() }, ... } });
 * const res = await fetch(`${proxy.url}/echo/hi`);
 * expect(await proxy.stop()).toBe(0);
 * scanForSecrets(proxy.stdout.join('\n'), [secret], { clientIds: ['app'] });
 * ```
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { type AddressInfo, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';
import { imageNodeFlags, imageRuntimeEnv } from './node-flags.js';

/** The repository root (two levels above this file). */
export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/** The built entry point the helpers run by default. */
export const proxyEntry = join(repoRoot, 'dist', 'main.js');

/** Asks the OS for a free TCP port on 127.0.0.1 (bind port 0, read it, release it). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Listens on `port` (0: a free one) and resolves with the port; rejects on EADDRINUSE and the like. */
export function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

/** A temporary directory for configuration and credential files. */
export interface TempDir {
  readonly path: string;
  /** Writes `content` to `name` inside the directory (mode 0600 by default); returns the full path. */
  write(name: string, content: string, mode?: number): Promise<string>;
  /** Removes the directory and everything in it. */
  remove(): Promise<void>;
}

/** Creates a fresh directory under the OS temp dir. */
export async function tempDir(prefix = 'm2m-proxy-test-'): Promise<TempDir> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return {
    path,
    async write(name, content, mode = 0o600) {
      const file = join(path, name);
      await mkdir(dirname(file), { recursive: true });
      await writeFile(file, content, { mode });
      return file;
    },
    remove: () => rm(path, { recursive: true, force: true }),
  };
}

/**
 * The child's environment: the caller's, without any `M2M_PROXY_*` variable (they override the
 * configuration file and would make a test depend on the shell it runs in), plus `extra`.
 */
function childEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  // The image's C library settings (MALLOC_ARENA_MAX): the proxy runs as in the image.
  const env: NodeJS.ProcessEnv = { ...imageRuntimeEnv() };
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('M2M_PROXY_')) env[k] = v;
  }
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** Options of {@link startProxy}. */
export interface StartProxyOptions {
  /** The configuration: an object (written as YAML) or YAML text. Must set listen.port and admin.port. */
  config: Record<string, unknown> | string;
  /** Extra environment variables (`undefined` removes one). `M2M_PROXY_*` from the parent are not inherited. */
  env?: Record<string, string | undefined>;
  /** Working directory of the child. Default: the repository root. */
  cwd?: string;
  /** Default {@link proxyEntry}. */
  entry?: string;
  /** How long to wait for `/healthz` to answer 200. Default 10 s. */
  readyTimeoutMs?: number;
  /** Called with each output line as it arrives (the demo uses it to show the proxy's log). */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
  /** Start the child in its own process group (it then does not get the terminal's Ctrl-C). */
  detached?: boolean;
}

/** A running proxy child process. */
export interface ProxyProcess {
  /** `http://127.0.0.1:<listen.port>` */
  readonly url: string;
  /** `http://127.0.0.1:<admin.port>` */
  readonly adminUrl: string;
  readonly pid: number;
  /** The configuration file written for it. */
  readonly configFile: string;
  /** The temporary directory holding it (removed by `stop`/`kill`). */
  readonly dir: string;
  /** Every stdout line that parsed as a JSON object (pino's lines), in order. */
  readonly logs: Record<string, unknown>[];
  /** Every stdout line, as text. */
  readonly stdout: string[];
  /** Every stderr line, as text. */
  readonly stderr: string[];
  /** Resolves with the exit code (null when killed by a signal) once the process has exited. */
  readonly exited: Promise<number | null>;
  /** Resolves with the first log line matching `predicate` (past or future); rejects after `timeoutMs`. */
  waitForLog(
    predicate: (line: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  /**
   * Sends `signal` and resolves with the exit code. After `timeoutMs` (default 30 s) the process
   * is killed with SIGKILL and the promise rejects.
   */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
  /** SIGKILL, without waiting. */
  kill(): void;
}

function hostFor(host: unknown): string {
  // A wildcard listen address is reached through loopback.
  if (typeof host !== 'string' || host === '0.0.0.0' || host === '::' || host === '') {
    return '127.0.0.1';
  }
  return host.includes(':') ? `[${host}]` : host;
}

function portOf(config: Record<string, unknown>, section: 'listen' | 'admin'): number {
  // With `routes`, `url` is the first route's port (each route has its own).
  const routes = section === 'listen' && Array.isArray(config.routes) ? config.routes : undefined;
  const owner = routes ? (routes[0] as Record<string, unknown> | undefined) : config;
  const value = (owner?.[section] as Record<string, unknown> | undefined)?.port;
  const port = typeof value === 'string' ? Number(value) : value;
  if (typeof port !== 'number' || !Number.isInteger(port) || port <= 0) {
    throw new Error(
      `startProxy: config.${section}.port must be set to a fixed port (use freePort())`,
    );
  }
  return port;
}

/** Collects lines from a child's stream. */
function collect(
  child: ChildProcess,
  stream: 'stdout' | 'stderr',
  lines: string[],
  onLine: (line: string) => void,
): void {
  const source = child[stream];
  if (!source) return;
  createInterface({ input: source, crlfDelay: Number.POSITIVE_INFINITY }).on('line', (line) => {
    lines.push(line);
    onLine(line);
  });
}

/**
 * Starts `node dist/main.js --config <file>` with `config` written to a temporary YAML file and
 * resolves once its admin `/healthz` answers 200. Rejects (with the child's stderr) if it exits
 * first or is not healthy within `readyTimeoutMs`.
 */
export async function startProxy(options: StartProxyOptions): Promise<ProxyProcess> {
  const yamlText = typeof options.config === 'string' ? options.config : stringify(options.config);
  const parsed = (
    typeof options.config === 'string' ? parse(options.config) : options.config
  ) as Record<string, unknown>;
  const listenPort = portOf(parsed, 'listen');
  const adminPort = portOf(parsed, 'admin');
  const url = `http://${hostFor((parsed.listen as Record<string, unknown> | undefined)?.host)}:${listenPort}`;
  const adminUrl = `http://${hostFor((parsed.admin as Record<string, unknown>).host)}:${adminPort}`;

  const dir = await tempDir('m2m-proxy-run-');
  const configFile = await dir.write('m2m-proxy.yaml', yamlText);
  // With the image's node flags: the tests check the proxy as the image runs it.
  const nodeFlags = imageNodeFlags();
  const child = spawn(
    process.execPath,
    [...nodeFlags, options.entry ?? proxyEntry, '--config', configFile],
    {
      cwd: options.cwd ?? repoRoot,
      env: childEnv(options.env),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: options.detached ?? false,
    },
  );
  if (child.pid === undefined) {
    await dir.remove();
    throw new Error(`startProxy: could not spawn ${process.execPath}`);
  }
  const pid = child.pid;

  const logs: Record<string, unknown>[] = [];
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiters = new Set<(line: Record<string, unknown>) => void>();
  collect(child, 'stdout', stdout, (line) => {
    options.onLine?.(line, 'stdout');
    if (!line.startsWith('{')) return;
    try {
      const entry = JSON.parse(line) as unknown;
      if (typeof entry === 'object' && entry !== null && !Array.isArray(entry)) {
        const log = entry as Record<string, unknown>;
        logs.push(log);
        for (const waiter of waiters) waiter(log);
      }
    } catch {
      // Not JSON after all: it stays in `stdout`.
    }
  });
  collect(child, 'stderr', stderr, (line) => options.onLine?.(line, 'stderr'));

  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      exitCode = code;
      resolve(code);
    });
    child.once('error', () => {
      exitCode = null;
      resolve(null);
    });
  });
  // Readline may still hold the last lines when 'exit' fires; 'close' comes after the streams end.
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));

  const cleanup = () => dir.remove().catch(() => undefined);

  const deadline = Date.now() + (options.readyTimeoutMs ?? 10_000);
  for (;;) {
    if (exitCode !== undefined) {
      await closed;
      await cleanup();
      throw new Error(
        `startProxy: the proxy exited with ${exitCode} before it was healthy\n${stderr.join('\n')}\n${stdout.join('\n')}`,
      );
    }
    try {
      const res = await fetch(`${adminUrl}/healthz`, { signal: AbortSignal.timeout(500) });
      await res.body?.cancel();
      if (res.status === 200) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      await cleanup();
      throw new Error(
        `startProxy: /healthz did not answer 200 within ${options.readyTimeoutMs ?? 10_000} ms\n${stderr.join('\n')}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  return {
    url,
    adminUrl,
    pid,
    configFile,
    dir: dir.path,
    logs,
    stdout,
    stderr,
    exited,
    waitForLog(predicate, timeoutMs = 10_000) {
      const found = logs.find(predicate);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`waitForLog: no matching log line within ${timeoutMs} ms`));
        }, timeoutMs);
        const waiter = (line: Record<string, unknown>) => {
          if (!predicate(line)) return;
          clearTimeout(timer);
          waiters.delete(waiter);
          resolve(line);
        };
        waiters.add(waiter);
      });
    },
    async stop(signal = 'SIGTERM', timeoutMs = 30_000) {
      if (exitCode === undefined) child.kill(signal);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          child.kill('SIGKILL');
          reject(new Error(`stop: the proxy did not exit within ${timeoutMs} ms of ${signal}`));
        }, timeoutMs);
      });
      try {
        const code = await Promise.race([exited, timeout]);
        await closed;
        return code;
      } finally {
        clearTimeout(timer);
        await cleanup();
      }
    },
    kill() {
      child.kill('SIGKILL');
      void exited.then(cleanup);
    },
  };
}

/** Options of {@link runCli}. */
export interface RunCliOptions {
  env?: Record<string, string | undefined>;
  /** Default: the repository root. */
  cwd?: string;
  /** Default {@link proxyEntry}. */
  entry?: string;
  /** Kill the process (SIGKILL) and reject after this long. Default 15 s. */
  timeoutMs?: number;
}

/** Runs `node dist/main.js ...args` to completion (e.g. `--check`) and returns its exit code and output. */
export function runCli(
  args: readonly string[],
  options: RunCliOptions = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [options.entry ?? proxyEntry, ...args], {
      cwd: options.cwd ?? repoRoot,
      env: childEnv(options.env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    const timeoutMs = options.timeoutMs ?? 15_000;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`runCli: ${args.join(' ')} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({
        code,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      });
    });
  });
}

/** Options of {@link scanForSecrets}. */
export interface ScanOptions {
  /** Client ids to pair with every secret for the `Basic base64(id:secret)` forms. */
  clientIds?: readonly string[];
}

/** Masks a secret for an error message: enough to tell which one, not enough to use it. */
function mask(secret: string): string {
  return `${secret.slice(0, 3)}… (${secret.length} chars)`;
}

/**
 * Fails (throws) if any secret occurs in `text`: as is, URL-encoded, base64/base64url, and as
 * `base64(id:secret)` (also with RFC 6749 §2.3.1 form-encoding) for every id in
 * `options.clientIds`. The message names each secret found (by index, masked) and the form.
 * Short secrets give false positives: use long, distinctive values in tests.
 */
export function scanForSecrets(
  text: string,
  secrets: readonly string[],
  options: ScanOptions = {},
): void {
  const found: string[] = [];
  secrets.forEach((secret, index) => {
    if (secret === '') return;
    const forms: [form: string, value: string][] = [
      ['plain', secret],
      ['url-encoded', encodeURIComponent(secret)],
      ['base64', Buffer.from(secret).toString('base64')],
      ['base64url', Buffer.from(secret).toString('base64url')],
    ];
    for (const id of options.clientIds ?? []) {
      // As is, and form-encoded first as RFC 6749 §2.3.1 asks; padding dropped so a prefix matches.
      const pairs = new Set([
        `${id}:${secret}`,
        `${encodeURIComponent(id)}:${encodeURIComponent(secret)}`,
      ]);
      for (const pair of pairs) {
        forms.push([
          `base64(${id}:secret)`,
          Buffer.from(pair).toString('base64').replace(/=+$/, ''),
        ]);
        forms.push([`base64url(${id}:secret)`, Buffer.from(pair).toString('base64url')]);
      }
    }
    const checked = new Set<string>();
    for (const [form, value] of forms) {
      if (checked.has(value)) continue; // e.g. plain and url-encoded are often the same string
      checked.add(value);
      if (value !== '' && text.includes(value)) {
        found.push(`secret #${index + 1} (${mask(secret)}) as ${form}`);
      }
    }
  });
  if (found.length > 0) {
    throw new Error(`secrets found in the output:\n  ${found.join('\n  ')}`);
  }
}
