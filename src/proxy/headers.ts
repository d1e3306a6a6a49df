import type { IncomingHttpHeaders } from 'node:http';

/**
 * Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the proxy owns. They are dropped in both
 * directions; `authorization` and `proxy-authorization` from the client are replaced by the
 * proxy's own bearer token, and `host` becomes the upstream's.
 */
const DROPPED_REQUEST = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'authorization',
  // undici sets `expect` handling itself; node has already answered `100-continue`.
  'expect',
]);
const DROPPED_RESPONSE = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** Names listed in a `Connection` header are hop-by-hop too (RFC 9110 §7.6.1). */
function connectionTokens(value: string | string[] | undefined): string[] {
  if (!value) return [];
  return (Array.isArray(value) ? value.join(',') : value)
    .split(',')
    .map((t) => t.trim().toLowerCase());
}

/** The headers to send upstream: the client's minus hop-by-hop and credentials, plus the bearer. */
export function upstreamRequestHeaders(
  incoming: IncomingHttpHeaders,
  bearer: string,
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const listed = connectionTokens(incoming.connection);
  for (const name in incoming) {
    const value = incoming[name];
    if (value === undefined || DROPPED_REQUEST.has(name)) continue;
    if (listed.length > 0 && listed.includes(name)) continue;
    out[name] = value;
  }
  out.authorization = `Bearer ${bearer}`;
  return out;
}

/** The headers to send back to the client: the upstream's minus hop-by-hop ones. */
export function clientResponseHeaders(
  upstream: Record<string, string | string[] | undefined>,
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const listed = connectionTokens(upstream.connection);
  for (const name in upstream) {
    const value = upstream[name];
    if (value === undefined || DROPPED_RESPONSE.has(name)) continue;
    if (listed.length > 0 && listed.includes(name)) continue;
    out[name] = value;
  }
  return out;
}
