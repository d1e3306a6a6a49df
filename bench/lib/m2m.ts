/**
 * m2m-proxy as the bench runs it: the built CLI (`node dist/m2m-proxy.cjs --config FILE`) in a child
 * process, with a configuration written to a temporary directory together with the credential
 * files, exactly as an operator would deploy it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ENTRY, imageNodeFlags, imageRuntimeEnv } from '../../fixtures/node-flags.js';
import { freePort } from '../../fixtures/process.js';
import { stopProcess, waitForHttp } from './processes.js';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
/** The proxy's entry point; `BENCH_M2M` benchmarks another build (e.g. a release's). */
export const mainJs = process.env.BENCH_M2M ?? join(repoRoot, ENTRY);
export const profDir = join(repoRoot, 'bench', 'results', 'prof');

/** The parts of the configuration a run varies; everything else is fixed below. */
export interface M2mOptions {
  upstreamUrl: string;
  tokenUrl: string;
  /** `rateLimit` section; pacing is off unless a run turns it on. */
  rateLimit?: Record<string, unknown>;
  /** Extra keys for the `token` section (refreshAt, minRemaining...). */
  token?: Record<string, unknown>;
  /** Start node with `--cpu-prof` (profile written on exit into bench/results/prof). */
  cpuProf?: boolean;
  /**
   * Serve these routes (`routes:` in the configuration) instead of one API: each with its own
   * port, upstream and `rateLimit`, all with the same token block (so one token). `upstreamUrl`
   * and `rateLimit` above are then unused.
   */
  routes?: ReadonlyArray<{ upstreamUrl: string; rateLimit?: Record<string, unknown> }>;
  /** Another build's entry point (e.g. the commit before a change), default {@link mainJs}. */
  entry?: string;
  /** Extra keys for the `log` section (`access: true`). */
  log?: Record<string, unknown>;
  /** The `tracing` section (off when absent). */
  tracing?: Record<string, unknown>;
  /**
   * Write stdout to a file in the run's directory, as a container runtime does, instead of a
   * pipe the bench reads (the access log at full load would cost the bench's CPU, not only the
   * proxy's).
   */
  stdoutToFile?: boolean;
  /** The node binary to run it with (default: the bench's own). */
  node?: string;
  /** The `limits` section (e.g. `connections` above its default of 1024). */
  limits?: Record<string, unknown>;
}

export class M2mProxy {
  private output: string[] = [];

  private constructor(
    readonly process: ChildProcess,
    readonly port: number,
    readonly adminPort: number,
    private readonly dir: string,
    /** Every route's port (the first is `port`); one entry without routes. */
    readonly ports: readonly number[] = [port],
  ) {
    const keep = (d: Buffer) => {
      this.output.push(...d.toString().split('\n').filter(Boolean));
      if (this.output.length > 50) this.output = this.output.slice(-50);
    };
    process.stdout?.on('data', keep);
    process.stderr?.on('data', keep);
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  get adminUrl(): string {
    return `http://127.0.0.1:${this.adminPort}`;
  }
  get pid(): number {
    return this.process.pid ?? -1;
  }
  /** The last lines the proxy wrote (warn level and above), for error messages. */
  get recentOutput(): string {
    return this.output.join('\n');
  }

  /** Size of stdout written to a file (`stdoutToFile`), in bytes. */
  stdoutBytes(): number {
    try {
      return statSync(join(this.dir, 'stdout.log')).size;
    } catch {
      return 0;
    }
  }

  /**
   * Starts the proxy. With `waitFor: 'ready'` it returns once `/readyz` is 200 (a token is held);
   * with `'listening'` as soon as `/healthz` answers, before any token (the cold-start run).
   */
  static async start(
    opts: M2mOptions,
    waitFor: 'ready' | 'listening' = 'ready',
  ): Promise<M2mProxy> {
    const dir = mkdtempSync(join(tmpdir(), 'm2m-bench-'));
    const clientIdFile = join(dir, 'client-id');
    const clientSecretFile = join(dir, 'client-secret');
    writeFileSync(clientIdFile, 'bench-client\n', { mode: 0o600 });
    writeFileSync(clientSecretFile, 'bench-secret\n', { mode: 0o600 });
    const [port, adminPort] = [await freePort(), await freePort()];
    const token = {
      url: opts.tokenUrl,
      authMethod: 'client_secret_basic',
      credentials: { clientIdFile, clientSecretFile },
      ...opts.token,
    };
    const ports = [port];
    for (let i = 1; i < (opts.routes?.length ?? 1); i++) ports.push(await freePort());
    const common = {
      admin: { host: '127.0.0.1', port: adminPort },
      log: { level: 'warn', ...opts.log },
      ...(opts.tracing ? { tracing: opts.tracing } : {}),
      ...(opts.limits ? { limits: opts.limits } : {}),
      shutdown: { timeout: '5s' },
    };
    const config = opts.routes
      ? {
          ...common,
          listen: { host: '127.0.0.1' },
          routes: opts.routes.map((route, i) => ({
            name: `route-${i}`,
            listen: { port: ports[i] },
            upstream: { url: route.upstreamUrl, timeout: '300s' },
            token,
            rateLimit: route.rateLimit ?? { perSecond: 0, window: { max: 0 } },
          })),
        }
      : {
          ...common,
          listen: { host: '127.0.0.1', port },
          upstream: { url: opts.upstreamUrl, timeout: '300s' },
          token,
          rateLimit: opts.rateLimit ?? { perSecond: 0, window: { max: 0 } },
        };
    const configFile = join(dir, 'm2m-proxy.yaml');
    // JSON is YAML: no serializer needed, and the file stays readable when a run fails.
    writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`);

    // The image's node flags (Dockerfile ENTRYPOINT): the bench measures what the image runs.
    const nodeArgs: string[] = [...imageNodeFlags(undefined, opts.node)];
    if (opts.cpuProf) {
      mkdirSync(profDir, { recursive: true });
      nodeArgs.push('--cpu-prof', '--cpu-prof-dir', profDir);
    }
    const stdout = opts.stdoutToFile ? openSync(join(dir, 'stdout.log'), 'w') : 'pipe';
    const child = spawn(
      opts.node ?? process.execPath,
      [...nodeArgs, opts.entry ?? mainJs, '--config', configFile],
      {
        cwd: repoRoot,
        stdio: ['ignore', stdout, 'pipe'],
        env: { ...imageRuntimeEnv(), ...process.env, NODE_ENV: 'production' },
      },
    );
    if (typeof stdout === 'number') closeSync(stdout); // the child holds its own copy
    const proxy = new M2mProxy(child, port, adminPort, dir, ports);
    try {
      await waitForHttp(`${proxy.adminUrl}/${waitFor === 'ready' ? 'readyz' : 'healthz'}`, {
        child,
        timeoutMs: 20_000,
      });
    } catch (err) {
      await proxy.stop();
      throw new Error(`m2m-proxy did not start: ${String(err)}\n${proxy.recentOutput}`);
    }
    return proxy;
  }

  /** The Prometheus text from the admin port. */
  async metrics(): Promise<string> {
    const res = await fetch(`${this.adminUrl}/metrics`);
    return res.text();
  }

  /** SIGTERM (a clean exit, so that `--cpu-prof` writes its profile), then clean up. */
  async stop(): Promise<void> {
    await stopProcess(this.process, 10_000);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
