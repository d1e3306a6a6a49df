import type { IncomingHttpHeaders } from 'node:http';

type Headers = Readonly<Record<string, string | string[] | undefined>>;

/** Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and are never forwarded. */
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
];

/**
 * Dropped from requests besides the hop-by-hop ones: the client's `authorization` is replaced by
 * the proxy's bearer token, `host` becomes the upstream's, and `expect` was already answered by
 * Node (`100-continue`) while undici frames the body itself.
 */
const DROPPED_REQUEST = new Set([...HOP_BY_HOP, 'host', 'authorization', 'expect']);
const DROPPED_RESPONSE = new Set(HOP_BY_HOP);

/** `headers` without the `dropped` names and without those listed in its `Connection` header. */
function withoutHopByHop(
  headers: Headers,
  dropped: ReadonlySet<string>,
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const connection = headers.connection;
  const listed = connection
    ? (Array.isArray(connection) ? connection.join(',') : connection)
        .split(',')
        .map((t) => t.trim().toLowerCase())
    : [];
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || dropped.has(name) || (listed.length > 0 && listed.includes(name)))
      continue;
    out[name] = value;
  }
  return out;
}

/** The headers to send upstream: the client's minus hop-by-hop and credentials, plus the bearer. */
export function upstreamRequestHeaders(
  incoming: IncomingHttpHeaders,
  bearer: string,
): Record<string, string | string[]> {
  const out = withoutHopByHop(incoming, DROPPED_REQUEST);
  out.authorization = `Bearer ${bearer}`;
  return out;
}

/** The headers to send back to the client: the upstream's minus hop-by-hop ones. */
export function clientResponseHeaders(upstream: Headers): Record<string, string | string[]> {
  return withoutHopByHop(upstream, DROPPED_RESPONSE);
}
