import type * as Http from 'node:http';

/**
 * `node:http` as its CommonJS exports object. An ES `import ... from 'node:http'` builds the
 * module's namespace by reading every export, and on Node 22+ some of them (`WebSocket`,
 * `MessageEvent`, `CloseEvent`) are lazy getters into Node's bundled undici: reading them loads
 * it, with `node:http2`, for the life of the process (≈ 10 MB resident on Node 24) though the
 * proxy uses neither. `process.getBuiltinModule` returns the module without reading them.
 */
export const http = process.getBuiltinModule('node:http') as typeof Http;
