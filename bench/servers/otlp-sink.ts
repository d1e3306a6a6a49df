/**
 * An OTLP/HTTP collector stand-in for the tracing bench: accepts every POST to `/v1/traces`,
 * reads the body and answers 200, counting requests and bytes (not decoding them: the bench
 * measures the proxy's cost of producing and sending spans, not a collector's).
 */
import { createServer } from 'node:http';
import { flag, serveIpc } from '../lib/ipc.js';

let requests = 0;
let bytes = 0;

const server = createServer((req, res) => {
  req.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
  });
  req.on('end', () => {
    requests++;
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '2' }).end('{}');
  });
});
server.keepAliveTimeout = 120_000;

server.listen(Number(flag('port', '0')), '127.0.0.1', () => {
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  serveIpc(address.port, { stats: () => ({ requests, bytes }) });
});
