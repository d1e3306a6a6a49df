/**
 * The parts of undici the proxy uses, loaded from their own modules. undici's main entry also
 * loads its fetch, WebSocket, cookie, cache and mock layers, and these read the global `Headers`,
 * which makes Node load its own bundled copy of undici as well: together ≈ 12 MB of resident
 * memory on Node 24 (≈ 7 MB on Node 20) that a sidecar keeps for its whole life and never uses.
 * The undici version is pinned exactly in package.json; these paths are part of that version.
 */
import { createRequire, Module } from 'node:module';
import type * as Undici from 'undici';

const load = createRequire(import.meta.url);

// undici's HTTP/1.1 client requires its HTTP/2 module when it loads, and that module loads
// `node:http2`, and with it `node:tls` and most of `node:crypto`: ≈ 4 MB resident on Node 24 for
// a protocol the proxy never speaks (undici speaks HTTP/2 only when TLS negotiates it and
// `allowH2` is set, which the proxy never does). So the require cache is given, under that
// module's file name, a module that refuses, before undici's client is loaded. An https
// upstream still loads `node:tls` when undici first connects to it.
const h2File = load.resolve('undici/lib/dispatcher/client-h2.js');
const h2Refusal = new Module(h2File);
h2Refusal.filename = h2File;
h2Refusal.loaded = true;
h2Refusal.exports = function connectH2(): never {
  throw new Error('HTTP/2 was negotiated with an upstream; m2m-proxy speaks HTTP/1.1 only');
};
load.cache[h2File] = h2Refusal;

// What undici's main entry does: the request API (`dispatcher.request`, ...) on every dispatcher.
const { prototype } = load('undici/lib/dispatcher/dispatcher') as { prototype: object };
Object.assign(prototype, load('undici/lib/api'));

/** undici's `Pool` (keep-alive connections to one origin). */
export const Pool = load('undici/lib/dispatcher/pool') as typeof Undici.Pool;

const Agent = load('undici/lib/dispatcher/agent') as typeof Undici.Agent;
/**
 * The default dispatcher of {@link request}: the proxy's own. Not undici's global one: on Node
 * 20+ that global is shared with Node's built-in fetch, and reading it loads Node's copy of undici.
 */
let agent: Undici.Agent | undefined;
function defaultAgent(): Undici.Agent {
  agent ??= new Agent();
  return agent;
}

/** Options of {@link request}: undici's request options, the URL giving origin and path. */
export type RequestOptions = Omit<Undici.Dispatcher.RequestOptions, 'origin' | 'path'> & {
  dispatcher?: Undici.Dispatcher | undefined;
};

/** undici's `request(url, options)` for an absolute URL (a shared keep-alive `Agent` by default). */
export function request(
  url: string | URL,
  options: RequestOptions,
): Promise<Undici.Dispatcher.ResponseData> {
  const { dispatcher, ...rest } = options;
  const target = new URL(url);
  const via = dispatcher ?? defaultAgent();
  return via.request({
    ...rest,
    origin: target.origin,
    path: `${target.pathname}${target.search}`,
  });
}
