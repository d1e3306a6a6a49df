import { mkdir, rename, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../../fixtures/process.js';
import { CLIENT_ID, CLIENT_SECRET, startWorld } from './world.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function readyz(adminUrl: string): Promise<{ status: number; body: { reason?: string } }> {
  const res = await fetch(`${adminUrl}/readyz`);
  return { status: res.status, body: (await res.json()) as { reason?: string } };
}

describe('token lifecycle', () => {
  it('renews before expiry with no client-visible pause', async () => {
    // 4 s tokens renewed at 50 %: about four renewals in 9 s of steady traffic.
    const world = await startWorld({
      ttl: 4,
      proxy: { token: { refreshAt: 0.5, minRemaining: '1s' } },
    });
    try {
      const latencies: number[] = [];
      const statuses: number[] = [];
      const until = Date.now() + 9000;
      while (Date.now() < until) {
        const started = performance.now();
        const res = await fetch(`${world.proxy.url}/echo/steady`);
        await res.arrayBuffer();
        latencies.push(performance.now() - started);
        statuses.push(res.status);
        await sleep(50);
      }
      expect(new Set(statuses)).toEqual(new Set([200]));
      expect(world.idp.tokenRequests).toBeGreaterThanOrEqual(4);
      expect(world.idp.tokenRequests).toBeLessThanOrEqual(6);
      // Every request the API saw carried a token it accepted: no expiry gap.
      expect(world.api.requests.every((r) => r.auth === 'ok')).toBe(true);
      const sorted = [...latencies].sort((a, b) => a - b);
      // No request waited for a renewal: the slowest stays far below a token round trip + retry.
      expect(sorted.at(-1)).toBeLessThan(1000);
    } finally {
      await world.close();
    }
  });

  it('keeps the old token while the IdP is down, answers 503 after expiry, and recovers without restart', async () => {
    const world = await startWorld({
      ttl: 3,
      proxy: {
        token: { refreshAt: 0.3, minRemaining: '1s', retry: { min: '200ms', max: '400ms' } },
        rateLimit: { queue: { max: 100, timeout: '500ms' } },
      },
    });
    try {
      expect((await fetch(`${world.proxy.url}/echo/before`)).status).toBe(200);
      world.idp.fail({ status: 503 });
      await sleep(1500); // renewals now fail; the token (3 s) is still valid
      expect((await fetch(`${world.proxy.url}/echo/during`)).status).toBe(200);
      expect((await readyz(world.proxy.adminUrl)).status).toBe(200);
      await sleep(2000); // past expiry
      const res = await fetch(`${world.proxy.url}/echo/expired`);
      expect(res.status).toBe(503);
      expect(res.headers.get('x-m2m-proxy-error')).toBe('token_unavailable');
      expect(await readyz(world.proxy.adminUrl)).toEqual({
        status: 503,
        body: {
          status: 'not_ready',
          reason: 'token_expired',
          routes: { default: 'token_expired' },
        },
      });
      world.idp.fail(null);
      await expect
        .poll(async () => (await readyz(world.proxy.adminUrl)).status, {
          timeout: 3000,
          interval: 100,
        })
        .toBe(200);
      expect((await fetch(`${world.proxy.url}/echo/after`)).status).toBe(200);
      const metrics = await (await fetch(`${world.proxy.adminUrl}/metrics`)).text();
      expect(metrics).toMatch(
        /m2m_proxy_token_refresh_failures_total\{route="default",reason="http_503"\} [1-9]/,
      );
      expect(metrics).toMatch(
        /m2m_proxy_requests_rejected_total\{route="default",reason="token_unavailable"\} 1/,
      );
      expect(world.proxy.logs.some((l) => l.event === 'token_expired')).toBe(true);
    } finally {
      await world.close();
    }
  });

  it('logs invalid_client with the OAuth error and without the secret', async () => {
    // 2 s tokens renewed after 1 s: the renewal meets the injected error.
    const world = await startWorld({
      ttl: 2,
      proxy: {
        token: { refreshAt: 0.5, minRemaining: '500ms', retry: { min: '100ms', max: '200ms' } },
      },
    });
    try {
      world.idp.fail({
        oauthError: 'invalid_client',
        description: 'client authentication failed',
        status: 401,
      });
      const line = await world.proxy.waitForLog((l) => l.event === 'token_renewal_failed', 5000);
      expect(line).toMatchObject({
        reason: 'invalid_client',
        status: 401,
        error: 'invalid_client',
        error_description: 'client authentication failed',
        endpoint: world.idp.tokenUrl,
      });
    } finally {
      await world.close();
    }
  });

  it('uses rotated credentials from a swapped ..data link at once', async () => {
    // The layout kubelet writes: ..<version>/ holds the files, ..data links to it, and each
    // file name links through ..data; a rotation swaps ..data atomically.
    const volume = await tempDir('m2m-volume-');
    const write = async (version: string, secret: string) => {
      await mkdir(join(volume.path, version));
      await writeFile(join(volume.path, version, 'client-id'), CLIENT_ID);
      await writeFile(join(volume.path, version, 'client-secret'), secret);
    };
    await write('..v1', CLIENT_SECRET);
    await symlink('..v1', join(volume.path, '..data'));
    await symlink('..data/client-id', join(volume.path, 'client-id'));
    await symlink('..data/client-secret', join(volume.path, 'client-secret'));
    const rotated = await startWorld({
      proxy: {
        token: {
          credentials: {
            clientIdFile: join(volume.path, 'client-id'),
            clientSecretFile: join(volume.path, 'client-secret'),
          },
        },
      },
    });
    try {
      expect((await fetch(`${rotated.proxy.url}/echo/before`)).status).toBe(200);
      const NEW_SECRET = 'rotated-secret-Kc93bW1xQ7';
      rotated.idp.rotateSecret(CLIENT_ID, NEW_SECRET);
      await write('..v2', NEW_SECRET);
      await symlink('..v2', join(volume.path, '..data_tmp'));
      await rename(join(volume.path, '..data_tmp'), join(volume.path, '..data'));
      await rotated.proxy.waitForLog((l) => l.event === 'credentials_changed', 5000);
      await expect.poll(() => rotated.idp.tokenLog[1]?.status, { timeout: 5000 }).toBe(200);
      expect(rotated.idp.tokenRequests).toBe(2);
      expect((await fetch(`${rotated.proxy.url}/echo/after`)).status).toBe(200);
      const text = [...rotated.proxy.stdout, ...rotated.proxy.stderr].join('\n');
      expect(text).not.toContain(NEW_SECRET);
    } finally {
      await rotated.close();
      await volume.remove();
    }
  });
});

describe('shutdown', () => {
  it('finishes a request in flight after SIGTERM, refuses new ones, then exits 0', async () => {
    const world = await startWorld();
    try {
      expect((await fetch(`${world.proxy.url}/echo/warm`)).status).toBe(200);
      const inFlight = fetch(`${world.proxy.url}/slow?ms=1500`);
      await expect.poll(() => world.api.requests.some((r) => r.path.endsWith('/slow'))).toBe(true);
      const stopped = world.proxy.stop('SIGTERM');
      await sleep(200);
      const ready = await readyz(world.proxy.adminUrl);
      expect(ready).toEqual({
        status: 503,
        body: { status: 'not_ready', reason: 'shutting_down' },
      });
      const refused = await fetch(`${world.proxy.url}/echo/late`);
      expect(refused.status).toBe(503);
      expect(refused.headers.get('x-m2m-proxy-error')).toBe('shutting_down');
      expect((await inFlight).status).toBe(200);
      expect(await stopped).toBe(0);
    } finally {
      await world.close();
    }
  });
});
