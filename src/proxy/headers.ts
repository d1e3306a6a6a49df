/**
 * Header filtering on the raw, flat name/value lists that node:http (`req.rawHeaders`) and
 * undici (`onHeaders`) hand over and both accept back: no per-request header objects, names keep
 * their case, repeated fields (`set-cookie`) stay as they came.
 */

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

/** Name lengths worth lowercasing: most fields (`content-type`, `x-request-id`) are skipped. */
const lengths = (names: ReadonlySet<string>) => new Set([...names].map((n) => n.length));
const REQUEST_LENGTHS = lengths(DROPPED_REQUEST);
const RESPONSE_LENGTHS = lengths(DROPPED_RESPONSE);

/** The lowercase tokens of a `Connection` header: more fields that only describe this hop. */
function connectionTokens(value: string): string[] {
  return value.split(',').map((t) => t.trim().toLowerCase());
}

/** What the proxy needs to know of a request's headers besides the list it forwards. */
export interface RequestHead {
  /** The headers to send upstream, ending in an `authorization` slot for `withBearer`. */
  headers: string[];
  contentLength: string | undefined;
  /** A `Transfer-Encoding` was present: the body is framed by chunks, not a length. */
  chunked: boolean;
}

/**
 * The client's headers minus hop-by-hop ones, credentials and those its `Connection` header
 * lists, in one pass over `req.rawHeaders`.
 */
export function requestHead(raw: readonly string[]): RequestHead {
  const headers: string[] = [];
  let contentLength: string | undefined;
  let chunked = false;
  let listed: string[] | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    if (REQUEST_LENGTHS.has(name.length)) {
      const lower = name.toLowerCase();
      if (lower === 'connection') listed = [...(listed ?? []), ...connectionTokens(value)];
      else if (lower === 'transfer-encoding') chunked = true;
      if (DROPPED_REQUEST.has(lower)) continue;
    }
    if (
      name.length === 14 &&
      contentLength === undefined &&
      name.toLowerCase() === 'content-length'
    )
      contentLength = value;
    headers.push(name, value);
  }
  const kept = listed ? dropListed(headers, listed) : headers;
  kept.push('authorization', '');
  return { headers: kept, contentLength, chunked };
}

/** Sets the bearer in the slot `requestHead` left (undici copies headers when it dispatches). */
export function withBearer(headers: string[], token: string): string[] {
  headers[headers.length - 1] = `Bearer ${token}`;
  return headers;
}

/** The upstream's response headers minus hop-by-hop ones, as strings for `writeHead`. */
export function responseHeaders(raw: readonly Buffer[]): string[] {
  const headers: string[] = [];
  let listed: string[] | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as Buffer).toString('latin1');
    const value = (raw[i + 1] as Buffer).toString('latin1');
    if (RESPONSE_LENGTHS.has(name.length)) {
      const lower = name.toLowerCase();
      if (lower === 'connection') listed = [...(listed ?? []), ...connectionTokens(value)];
      if (DROPPED_RESPONSE.has(lower)) continue;
    }
    headers.push(name, value);
  }
  return listed ? dropListed(headers, listed) : headers;
}

/** The first value of `name` (lowercase) in a raw response header list. */
export function rawHeader(raw: readonly Buffer[], name: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    const field = raw[i] as Buffer;
    if (field.length === name.length && field.toString('latin1').toLowerCase() === name)
      return (raw[i + 1] as Buffer).toString('latin1');
  }
  return undefined;
}

/** `headers` without the fields a `Connection` header named (rare: a second pass is fine). */
function dropListed(headers: string[], listed: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as string;
    if (!listed.includes(name.toLowerCase())) out.push(name, headers[i + 1] as string);
  }
  return out;
}
