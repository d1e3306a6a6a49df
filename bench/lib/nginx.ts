/**
 * Baseline (d): nginx as a reverse proxy with a keep-alive upstream pool, the configuration an
 * operator would reach for. It runs from a temporary prefix (`daemon off`, pid, logs and temp
 * files in a temp dir) as the current user, with one worker: one process, like m2m-proxy.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../fixtures/process.js';
import { capture, stopProcess, waitForHttp } from './processes.js';

export const nginxPath = process.env.BENCH_NGINX ?? '/usr/sbin/nginx';

/** The nginx version string, or undefined when nginx is not installed. */
export async function nginxVersion(): Promise<string | undefined> {
  if (!existsSync(nginxPath)) return undefined;
  const out = await capture(nginxPath, ['-v']);
  return out.replace(/^nginx version:\s*/, '');
}

export class Nginx {
  private constructor(
    readonly process: ChildProcess,
    readonly port: number,
    private readonly dir: string,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  static async start(upstreamPort: number): Promise<Nginx> {
    const dir = mkdtempSync(join(tmpdir(), 'm2m-bench-nginx-'));
    const port = await freePort();
    const user = userInfo();
    // As root, nginx would hand its worker to `nobody`, which cannot use our temp dir.
    const userLine = user.uid === 0 ? `user ${user.username};` : '';
    const conf = `
${userLine}
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream bench_upstream {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
    keepalive_requests 1000000;
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench";
    }
  }
}
`;
    const confFile = join(dir, 'nginx.conf');
    writeFileSync(confFile, conf);
    const child = spawn(nginxPath, ['-p', dir, '-c', confFile, '-e', join(dir, 'error.log')], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    const nginx = new Nginx(child, port, dir);
    try {
      await waitForHttp(`${nginx.url}/`, { child, timeoutMs: 10_000 });
    } catch (err) {
      await nginx.stop();
      throw err;
    }
    return nginx;
  }

  async stop(): Promise<void> {
    // SIGQUIT is nginx's graceful stop; SIGTERM (fast stop) is fine for a bench.
    await stopProcess(this.process);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
