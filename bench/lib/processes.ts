/**
 * Starting and stopping the processes under test. Every server runs in its own child process so
 * that the load generator (autocannon, in the bench's own process) never competes with it for
 * an event loop; only the kernel's scheduler stands between them.
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import type { IpcCall, IpcMessage } from './ipc.js';

/** Sends SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. */
export async function stopProcess(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** One of the bench's own servers (bench/servers/*.ts), running in a forked child. */
export class ServerChild {
  private nextId = 1;
  private readonly pending = new Map<number, (msg: IpcMessage) => void>();

  private constructor(
    readonly name: string,
    readonly process: ChildProcess,
    readonly port: number,
  ) {
    process.on('message', (raw: unknown) => {
      const msg = raw as IpcMessage;
      if (msg.type !== 'reply') return;
      this.pending.get(msg.id)?.(msg);
      this.pending.delete(msg.id);
    });
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get pid(): number {
    return this.process.pid ?? -1;
  }

  /** Forks `bench/servers/<name>.ts` with the given flags and waits until it listens. */
  static async start(name: string, args: string[] = []): Promise<ServerChild> {
    const file = fileURLToPath(new URL(`../servers/${name}.ts`, import.meta.url));
    const child = fork(file, args, {
      // tsx as a loader only: the servers' hot paths run as plain compiled JavaScript.
      execArgv: ['--import', import.meta.resolve('tsx')],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const port = await new Promise<number>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`${name} exited early (${code})`)));
      child.on('message', (raw: unknown) => {
        const msg = raw as IpcMessage;
        if (msg.type === 'ready') resolve(msg.port);
      });
    });
    return new ServerChild(name, child, port);
  }

  /** Calls one of the child's IPC handlers and returns its result. */
  call<T>(cmd: string, arg?: unknown): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, (msg) => {
        if (msg.type === 'reply' && msg.error !== undefined) reject(new Error(msg.error));
        else if (msg.type === 'reply') resolve(msg.result as T);
      });
      const call: IpcCall = { id, cmd, arg };
      this.process.send(call);
    });
  }

  stop(): Promise<void> {
    return stopProcess(this.process);
  }
}

/** Polls `url` until it answers `status` (default 200) or `timeoutMs` passes. */
export async function waitForHttp(
  url: string,
  opts: { status?: number; timeoutMs?: number; child?: ChildProcess } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (opts.child && opts.child.exitCode !== null) {
      throw new Error(`process exited with ${opts.child.exitCode} while waiting for ${url}`);
    }
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.status === (opts.status ?? 200)) return;
      last = `status ${res.status}`;
    } catch (err) {
      last = String(err);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${url} not ready after ${opts.timeoutMs ?? 15_000} ms (${last})`);
}

/** Runs a command and returns its stdout (for `nginx -v`, `sh -c 'ulimit -n'`...). */
export async function capture(cmd: string, args: string[]): Promise<string> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${code}: ${out.trim()}`);
  return out.trim();
}
