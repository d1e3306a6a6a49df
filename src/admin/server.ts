import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import { http } from '../node-http.js';

/**
 * Why the proxy cannot serve: a reason for the whole process (`shutting_down`), or one with the
 * routes that have no valid token, each with its own reason (`no_token_yet`, `token_expired`).
 */
export type ReadinessReason =
  | string
  | { readonly reason: string; readonly routes: Readonly<Record<string, string>> };

/** What `/readyz` asks: why the proxy cannot serve, or `undefined` when it can. */
export type ReadinessProbe = () => ReadinessReason | undefined;

/**
 * The admin port (docs/behaviour.md, "Admin port"): `/metrics` in Prometheus text format, `/healthz`
 * (the process runs) and `/readyz` (a valid token is held and the proxy is not shutting down).
 * It serves nothing else and never anything secret.
 */
export function createAdminServer(registry: Registry, notReadyReason: ReadinessProbe): Server {
  return http.createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      json(res, 405, { error: 'method_not_allowed' });
      return;
    }
    switch (path) {
      case '/metrics':
        registry.metrics().then(
          (text) => {
            res.writeHead(200, { 'content-type': registry.contentType }).end(text);
          },
          () => json(res, 500, { error: 'metrics_failed' }),
        );
        return;
      case '/healthz':
        json(res, 200, { status: 'ok' });
        return;
      case '/readyz': {
        const reason = notReadyReason();
        if (typeof reason === 'string') json(res, 503, { status: 'not_ready', reason });
        else if (reason) json(res, 503, { status: 'not_ready', ...reason });
        else json(res, 200, { status: 'ready' });
        return;
      }
      default:
        json(res, 404, { error: 'not_found' });
    }
  });
}

function json(res: ServerResponse, status: number, body: object): void {
  const text = JSON.stringify(body);
  res
    .writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    })
    .end(text);
}
