/**
 * Baseline (b): the minimal reverse proxy most Node users would write with `http-proxy`, given a
 * keep-alive agent so that it is not penalised for opening a connection per request.
 */
import { Agent, createServer } from 'node:http';
import httpProxy from 'http-proxy';
import { flag, serveIpc } from '../lib/ipc.js';

const target = flag('target', 'http://127.0.0.1:1');
const agent = new Agent({ keepAlive: true, maxSockets: 256 });
const proxy = httpProxy.createProxyServer({ target, agent });
proxy.on('error', (_err, _req, res) => {
  if ('writeHead' in res && !res.headersSent) res.writeHead(502);
  res.end();
});

const server = createServer((req, res) => proxy.web(req, res));
server.keepAliveTimeout = 120_000;
server.listen(Number(flag('port', '0')), '127.0.0.1', () => {
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  serveIpc(address.port, {});
});
