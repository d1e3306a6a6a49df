/**
 * The floor for the "10,000 queued requests" memory figure: a bare node:http server that accepts
 * requests and never answers them, holding what any Node server holds per open request (socket,
 * parser, IncomingMessage, ServerResponse). m2m-proxy's growth minus this one's is the proxy's
 * own cost per queued request.
 */
import { createServer, type ServerResponse } from 'node:http';
import { serveIpc } from '../lib/ipc.js';

const held: ServerResponse[] = [];
const server = createServer((req, res) => {
  if (req.url === '/warm') {
    res.end('ok');
    return;
  }
  held.push(res);
  res.on('close', () => {
    const i = held.indexOf(res);
    if (i >= 0) held.splice(i, 1);
  });
});
server.keepAliveTimeout = 120_000;
server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  serveIpc(address.port, { held: () => held.length });
});
