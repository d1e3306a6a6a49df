import type { Server } from 'node:http';
import { M2mError } from './errors.js';

/**
 * An address from the configuration cannot be listened on (in use, not local, not permitted): a
 * configuration error, whose message names the key to change.
 */
export class ListenError extends M2mError {
  readonly code = 'listen_failed';

  constructor(key: string, host: string, port: number, code: string | undefined) {
    const why =
      code === 'EADDRINUSE'
        ? 'is already in use'
        : code === 'EADDRNOTAVAIL'
          ? 'is not an address of this host'
          : code === 'EACCES'
            ? 'may not be listened on by this user'
            : `cannot be listened on (${code ?? 'error'})`;
    super(`${key}.port / ${key}.host: ${host}:${port} ${why}`);
  }
}

/** Listens on `host:port`; rejects with a `ListenError` naming the configuration `key`. */
export function listen(server: Server, host: string, port: number, key: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) =>
      reject(new ListenError(key, host, port, err.code));
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** Stops listening and resolves once every connection has ended (idle ones are closed now). */
export function close(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close(() => resolve());
    server.closeIdleConnections();
  });
}
