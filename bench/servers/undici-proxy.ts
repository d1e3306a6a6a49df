/**
 * Reference (e): the thinnest forwarder undici allows, `Pool.stream` piping the response
 * straight into the client's `ServerResponse`. No target is attached to it; it shows how far a
 * Node proxy on undici can go on this machine.
 */
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import { Pool } from 'undici';
import { flag, serveIpc } from '../lib/ipc.js';

const target = flag('target', 'http://127.0.0.1:1');
const pool = new Pool(target, { connections: 128, pipelining: 1 });
const hopByHop = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'upgrade',
  'proxy-connection',
  'te',
  'trailer',
  'host',
]);

function forwardHeaders(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !hopByHop.has(name)) out[name] = value;
  }
  return out;
}

const server = createServer((req, res) => {
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  pool.stream(
    {
      path: req.url ?? '/',
      method: req.method as 'GET',
      headers: forwardHeaders(req.headers),
      body: hasBody ? req : null,
      opaque: res,
    },
    ({ statusCode, headers, opaque }) => {
      const out = opaque as ServerResponse;
      const h: Record<string, string | string[]> = {};
      for (const [name, value] of Object.entries(headers)) {
        if (value !== undefined && !hopByHop.has(name)) h[name] = value;
      }
      out.writeHead(statusCode, h);
      return out;
    },
    (err) => {
      if (err && !res.headersSent) res.writeHead(502).end();
      else if (err) res.destroy();
    },
  );
});
server.keepAliveTimeout = 120_000;
server.listen(Number(flag('port', '0')), '127.0.0.1', () => {
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  serveIpc(address.port, {});
});
