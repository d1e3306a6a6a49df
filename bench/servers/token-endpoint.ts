/**
 * The OAuth 2.0 token endpoint for the bench (RFC 6749 §4.4.3 response shape): answers every
 * POST with a fresh random access token after an optional delay, and records when each token
 * request started and ended and how many were in flight at once. It does not check
 * credentials; the bench counts requests, it does not test authentication.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { performance } from 'node:perf_hooks';
import { flag, serveIpc } from '../lib/ipc.js';

let expiresIn = Number(flag('expires-in', '3600'));
let delayMs = Number(flag('delay-ms', '0'));

/** Epoch milliseconds with sub-millisecond resolution, comparable with the bench's clock. */
const now = () => performance.timeOrigin + performance.now();

interface TokenRequest {
  start: number;
  end: number;
}
let log: TokenRequest[] = [];
let inFlight = 0;
let maxInFlight = 0;

const server = createServer((req, res) => {
  const start = now();
  inFlight++;
  maxInFlight = Math.max(maxInFlight, inFlight);
  req.resume();
  req.on('end', () => {
    setTimeout(() => {
      const body = JSON.stringify({
        access_token: randomBytes(24).toString('base64url'),
        token_type: 'Bearer',
        expires_in: expiresIn,
      });
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(body);
      inFlight--;
      log.push({ start, end: now() });
    }, delayMs);
  });
});

server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  serveIpc(address.port, {
    /** Forget what was recorded and (optionally) change the token lifetime and the delay. */
    reset: (arg) => {
      const opts = (arg ?? {}) as { expiresIn?: number; delayMs?: number };
      if (opts.expiresIn !== undefined) expiresIn = opts.expiresIn;
      if (opts.delayMs !== undefined) delayMs = opts.delayMs;
      log = [];
      maxInFlight = inFlight;
      return null;
    },
    stats: () => ({ requests: log, inFlight, maxInFlight, now: now() }),
  });
});
