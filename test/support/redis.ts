import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { freePort } from './process.js';

/** A real `redis-server` started for a test, on a free loopback port. */
export interface RedisServer {
  /** `redis://127.0.0.1:<port>` (no password in it, as the configuration requires). */
  url: string;
  port: number;
  /** PID of the current server process. */
  pid: number;
  /** Stops the server (SIGTERM by PID, SIGKILL after 2 s) and waits until it has exited. */
  stop(): Promise<void>;
  /** Starts a fresh, empty server on the same port (after `stop`, or stopping it first). */
  restart(): Promise<void>;
}

/** Options of {@link startRedis}. */
export interface StartRedisOptions {
  /** Passed as `--requirepass`. */
  password?: string;
}

const INSTALL_HINT =
  'redis-server is not on PATH. The shared-budget tests need a real Redis: ' +
  'install it with `apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis`.';

/** Fails loudly (never skips) when `redis-server` is missing. */
function assertRedisInstalled(): void {
  const probe = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) throw new Error(INSTALL_HINT);
}

/** True when something answers PING with +PONG or -NOAUTH (password required) on the port. */
function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(200, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (data) => done(/^(\+PONG|-NOAUTH)/.test(data.toString())));
  });
}

async function spawnServer(port: number, options: StartRedisOptions): Promise<ChildProcess> {
  const args = [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
    '--loglevel',
    'warning',
  ];
  if (options.password !== undefined) args.push('--requirepass', options.password);
  const child = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  let exited = false;
  child.once('exit', () => {
    exited = true;
  });
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (exited) throw new Error(`redis-server exited at start (port ${port})`);
    if (await answersPing(port)) return child;
    await new Promise((r) => setTimeout(r, 20));
  }
  child.kill('SIGKILL');
  throw new Error(`redis-server did not answer PING on port ${port} within 5 s`);
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = once(child, 'exit');
  process.kill(child.pid, 'SIGTERM');
  const timer = setTimeout(() => {
    if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGKILL');
  }, 2000);
  await exited;
  clearTimeout(timer);
}

/**
 * Starts `redis-server --port <free> --save "" --appendonly no --bind 127.0.0.1` and waits until
 * it answers PING. Call `stop()` in `afterAll`.
 */
export async function startRedis(options: StartRedisOptions = {}): Promise<RedisServer> {
  assertRedisInstalled();
  const port = await freePort();
  let child = await spawnServer(port, options);
  const server: RedisServer = {
    url: `redis://127.0.0.1:${port}`,
    port,
    pid: child.pid ?? -1,
    stop: () => stopServer(child),
    restart: async () => {
      await stopServer(child);
      child = await spawnServer(port, options);
      server.pid = child.pid ?? -1;
    },
  };
  return server;
}
