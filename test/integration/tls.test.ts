import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TempDir, tempDir } from '../../fixtures/process.js';
import { startWorld } from './world.js';

/** A private CA and a server certificate for 127.0.0.1 signed by it (openssl, as operators do). */
function makeCa(dir: string): { ca: string; key: string; cert: string } {
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  run(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
    '-days',
    '1',
    '-subj',
    '/CN=m2m-test-ca',
  );
  run(
    'req',
    '-new',
    ...ec,
    '-keyout',
    'server.key',
    '-out',
    'server.csr',
    '-subj',
    '/CN=127.0.0.1',
  );
  execFileSync('sh', ['-c', 'printf "subjectAltName=IP:127.0.0.1\\n" > san.ext'], { cwd: dir });
  run(
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'server.pem',
    '-days',
    '1',
    '-extfile',
    'san.ext',
  );
  return { ca: join(dir, 'ca.pem'), key: join(dir, 'server.key'), cert: join(dir, 'server.pem') };
}

describe('an HTTPS upstream with a private CA (upstream.caFile)', () => {
  let dir: TempDir;
  let server: Server;
  let url: string;
  let ca: string;
  const seen: (string | undefined)[] = [];

  beforeAll(async () => {
    dir = await tempDir('m2m-tls-');
    const files = makeCa(dir.path);
    ca = files.ca;
    server = createServer(
      { key: readFileSync(files.key), cert: readFileSync(files.cert) },
      (req, res) => {
        seen.push(req.headers.authorization?.split(' ')[0]);
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"tls":true}');
      },
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/api`;
  });
  afterAll(async () => {
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
    await dir?.remove();
  });

  it('forwards over TLS when the CA is configured', async () => {
    const world = await startWorld({ proxy: { upstream: { url, caFile: ca } } });
    try {
      const res = await fetch(`${world.proxy.url}/hello`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ tls: true });
      expect(seen.at(-1)).toBe('Bearer');
    } finally {
      await world.close();
    }
  });

  it('answers 502 upstream_unreachable when the certificate is not trusted', async () => {
    const before = seen.length;
    const world = await startWorld({ proxy: { upstream: { url } } });
    try {
      const res = await fetch(`${world.proxy.url}/hello`);
      expect(res.status).toBe(502);
      expect(res.headers.get('x-m2m-proxy-error')).toBe('upstream_unreachable');
      expect(seen.length).toBe(before);
      const line = await world.proxy.waitForLog((l) => l.event === 'upstream_unreachable');
      expect(String(line.code)).toMatch(/CERT|SELF_SIGNED|UNABLE_TO_VERIFY/);
    } finally {
      await world.close();
    }
  });
});
