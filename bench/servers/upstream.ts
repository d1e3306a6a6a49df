/**
 * The upstream API for the bench: answers every request with 200 and a small JSON body after
 * draining the request body, as fast as node:http allows. It does not check the bearer token
 * (the throughput runs measure the proxy, not JWT verification). On request it records the
 * arrival time of every request (for the pacing runs) and counts bytes received (for the 1 GB
 * streaming run).
 */
import { createServer } from 'node:http';
import { performance } from 'node:perf_hooks';
import { flag, serveIpc } from '../lib/ipc.js';

const body = Buffer.from('{"ok":true}');
const headers = { 'content-type': 'application/json', 'content-length': String(body.length) };

let recording = false;
let arrivals: number[] = [];
let requests = 0;
let bytes = 0;
let withAuthorization = 0;

const server = createServer((req, res) => {
  requests++;
  if (req.headers.authorization !== undefined) withAuthorization++;
  if (recording) arrivals.push(performance.now());
  if (req.method === 'GET' || req.method === 'HEAD') {
    res.writeHead(200, headers).end(body);
    req.resume();
    return;
  }
  let received = 0;
  req.on('data', (chunk: Buffer) => {
    received += chunk.length;
  });
  req.on('end', () => {
    bytes += received;
    const reply = Buffer.from(`{"ok":true,"received":${received}}`);
    res
      .writeHead(200, {
        'content-type': 'application/json',
        'content-length': String(reply.length),
      })
      .end(reply);
  });
});
// Proxies keep idle connections to us between rounds; Node's 5 s default would close them under
// the proxies' feet and turn into spurious resets.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 121_000;
server.requestTimeout = 0;

server.listen(Number(flag('port', '0')), '127.0.0.1', () => {
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  serveIpc(address.port, {
    startRecording: () => {
      recording = true;
      arrivals = [];
      return null;
    },
    stopRecording: () => {
      recording = false;
      const out = arrivals;
      arrivals = [];
      return out;
    },
    stats: () => ({ requests, bytes, withAuthorization }),
  });
});
