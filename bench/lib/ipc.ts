/**
 * A tiny request/response protocol over the IPC channel of a forked child: the bench asks a
 * server child for its counters or recorded times without putting any control route on the
 * server's hot path.
 */

/** A message from the parent: call `cmd` with `arg`; the reply carries the same `id`. */
export interface IpcCall {
  id: number;
  cmd: string;
  arg?: unknown;
}

/** A message from the child: either its listening port once, or the reply to one call. */
export type IpcMessage =
  | { type: 'ready'; port: number }
  | { type: 'reply'; id: number; result?: unknown; error?: string };

export type Handlers = Record<string, (arg: unknown) => unknown>;

/** Child side: announce the port, then answer calls until the parent goes away. */
export function serveIpc(port: number, handlers: Handlers): void {
  const send = (msg: IpcMessage) => process.send?.(msg);
  process.on('message', (raw: unknown) => {
    const call = raw as IpcCall;
    const handler = handlers[call.cmd];
    if (!handler) {
      send({ type: 'reply', id: call.id, error: `unknown command ${call.cmd}` });
      return;
    }
    try {
      send({ type: 'reply', id: call.id, result: handler(call.arg) });
    } catch (err) {
      send({ type: 'reply', id: call.id, error: String(err) });
    }
  });
  // The parent dying closes the channel; a bench child must never outlive the bench.
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready', port });
}

/** Reads `--name value` from argv (children take their settings as flags). */
export function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const value = i >= 0 ? process.argv[i + 1] : undefined;
  return value ?? fallback;
}
