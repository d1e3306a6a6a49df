import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { decodeJwt } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  type Idp,
  makePrivateKeyClient,
  makeSecretClient,
  type PrivateKeyClient,
  requestToken,
  startIdp,
} from '../../fixtures/idp.js';
import { freePort, listen, scanForSecrets } from '../../fixtures/process.js';
import { pseudoRandomSha256, startUpstream, type Upstream } from '../../fixtures/upstream.js';

const BASIC = { clientId: 'basic-app', secret: 'basic-secret-0123456789' };
const POST = { clientId: 'post-app', secret: 'post-secret-0123456789' };

let idp: Idp;
let keyClient: PrivateKeyClient;
let rsaClient: PrivateKeyClient;

beforeAll(async () => {
  keyClient = await makePrivateKeyClient('key-app', 'ES256');
  rsaClient = await makePrivateKeyClient('rsa-app', 'RS256');
  idp = await startIdp({
    accessTokenTTL: 30,
    clients: [
      makeSecretClient(BASIC.clientId, BASIC.secret, 'client_secret_basic'),
      makeSecretClient(POST.clientId, POST.secret, 'client_secret_post'),
      keyClient.metadata,
      rsaClient.metadata,
    ],
  });
});

afterAll(async () => {
  await idp?.close();
});

afterEach(() => {
  idp.fail(null);
});

const basicToken = async () => {
  const { status, body } = await requestToken(idp.tokenUrl, {
    method: 'client_secret_basic',
    ...BASIC,
  });
  expect(status).toBe(200);
  return body.access_token as string;
};

describe('idp', () => {
  it('issues a JWT access token with exp for client_secret_basic', async () => {
    const before = idp.tokenRequests;
    const { status, body } = await requestToken(idp.tokenUrl, {
      method: 'client_secret_basic',
      ...BASIC,
    });
    expect(status).toBe(200);
    expect(body.token_type).toBe('Bearer');
    expect(body.expires_in).toBe(30);
    const claims = decodeJwt(body.access_token as string);
    expect(claims.iss).toBe(idp.issuer);
    expect(claims.aud).toBe(idp.audience);
    expect(claims.client_id).toBe(BASIC.clientId);
    expect((claims.exp ?? 0) - (claims.iat ?? 0)).toBe(30);
    expect(idp.tokenRequests).toBe(before + 1);
    expect(idp.tokenLog.at(-1)).toMatchObject({
      authMethod: 'client_secret_basic',
      clientId: BASIC.clientId,
      status: 200,
    });
  });

  it('issues a JWT access token for client_secret_post', async () => {
    const { status, body } = await requestToken(idp.tokenUrl, {
      method: 'client_secret_post',
      ...POST,
    });
    expect(status).toBe(200);
    expect(decodeJwt(body.access_token as string).sub).toBe(POST.clientId);
    const last = idp.tokenLog.at(-1);
    expect(last?.authMethod).toBe('client_secret_post');
    expect(last?.params.client_secret).toBe('[redacted]');
  });

  it.each([
    ['ES256', () => keyClient],
    ['RS256', () => rsaClient],
  ])('issues a JWT access token for private_key_jwt (%s)', async (_alg, client) => {
    const { metadata, privateKeyPem, kid, alg } = client();
    const { status, body } = await requestToken(idp.tokenUrl, {
      method: 'private_key_jwt',
      clientId: metadata.client_id,
      privateKeyPem,
      kid,
      alg,
    });
    expect(status).toBe(200);
    expect(decodeJwt(body.access_token as string).client_id).toBe(metadata.client_id);
    expect(idp.tokenLog.at(-1)?.authMethod).toBe('private_key_jwt');
  });

  it('answers a wrong secret with 401 invalid_client', async () => {
    const { status, body } = await requestToken(idp.tokenUrl, {
      method: 'client_secret_basic',
      clientId: BASIC.clientId,
      secret: 'wrong',
    });
    expect(status).toBe(401);
    expect(body.error).toBe('invalid_client');
  });

  it('rotates a secret: the old one stops working, the new one works', async () => {
    const id = 'rotating-app';
    idp.setClient(makeSecretClient(id, 'first-secret-0123456789'));
    const creds = (secret: string) =>
      ({ method: 'client_secret_basic', clientId: id, secret }) as const;
    expect((await requestToken(idp.tokenUrl, creds('first-secret-0123456789'))).status).toBe(200);
    idp.rotateSecret(id, 'second-secret-0123456789');
    expect((await requestToken(idp.tokenUrl, creds('first-secret-0123456789'))).status).toBe(401);
    expect((await requestToken(idp.tokenUrl, creds('second-secret-0123456789'))).status).toBe(200);
  });

  it('injects 503, OAuth errors and heals after `times`', async () => {
    idp.fail({ status: 503, retryAfter: '2', times: 1 });
    const res = await fetch(idp.tokenUrl, {
      method: 'POST',
      body: 'grant_type=client_credentials',
    });
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('2');
    expect(idp.tokenLog.at(-1)).toMatchObject({ status: 503, injected: 'status' });
    await basicToken(); // healed after one

    idp.fail({ oauthError: 'invalid_scope' });
    const failed = await requestToken(idp.tokenUrl, { method: 'client_secret_basic', ...BASIC });
    expect(failed).toMatchObject({ status: 400, body: { error: 'invalid_scope' } });
    idp.fail(null);
    await basicToken();
  });

  it('hangs on demand until the client gives up', async () => {
    idp.fail({ hang: true, times: 1 });
    const res = fetch(idp.tokenUrl, {
      method: 'POST',
      body: 'grant_type=client_credentials',
      signal: AbortSignal.timeout(300),
    });
    await expect(res).rejects.toThrow();
    expect(idp.tokenLog.at(-1)).toMatchObject({ status: 0, injected: 'hang' });
  });
});

describe('upstream', () => {
  let api: Upstream;

  beforeAll(async () => {
    api = await startUpstream({
      issuer: idp.issuer,
      audience: idp.audience,
      basePath: '/api/v1',
    });
  });
  afterAll(async () => {
    await api?.close();
  });
  afterEach(() => {
    api.reset();
  });

  it('rejects a request without a token with 401', async () => {
    const res = await fetch(`${api.url}/echo/x`);
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Bearer /);
    expect(api.requests[0]?.auth).toBe('missing');
  });

  it('rejects an invalid token with 401 invalid_token', async () => {
    const token = await basicToken();
    const tampered = `${token.slice(0, -4)}AAAA`;
    const res = await fetch(`${api.url}/echo/x`, {
      headers: { authorization: `Bearer ${tampered}` },
    });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toContain('error="invalid_token"');
    expect(api.requests[0]?.auth).toBe('invalid');
  });

  it('rejects a token of another audience', async () => {
    const other = await startUpstream({ issuer: idp.issuer, audience: 'api://other' });
    try {
      const res = await fetch(`${other.url}/echo/x`, {
        headers: { authorization: `Bearer ${await basicToken()}` },
      });
      expect(res.status).toBe(401);
    } finally {
      await other.close();
    }
  });

  it('accepts a valid token and echoes the request under the base path', async () => {
    const token = await basicToken();
    const res = await fetch(`${api.url}/echo/hello?a=1&b=2`, {
      headers: { authorization: `Bearer ${token}`, 'x-custom': 'kept' },
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({
      method: 'GET',
      path: '/api/v1/echo/hello',
      query: 'a=1&b=2',
      sub: BASIC.clientId,
      client_id: BASIC.clientId,
    });
    expect(body.headers).toMatchObject({ 'x-custom': 'kept', host: api.host });
    expect(body.headers).not.toHaveProperty('authorization');
    const seen = api.requests[0];
    expect(seen?.claims?.jti).toBe(decodeJwt(token).jti);
    expect(seen?.token).toBe(token);
    expect(seen?.headers.host).toBe(api.host);
  });

  it('answers 404 outside the base path', async () => {
    const res = await fetch(`${api.origin}/echo/x`, {
      headers: { authorization: `Bearer ${await basicToken()}` },
    });
    expect(res.status).toBe(404);
  });

  it('hashes uploads while streaming', async () => {
    const body = Buffer.alloc(3 * 1024 * 1024 + 17, 7);
    const res = await fetch(`${api.url}/upload`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await basicToken()}` },
      body,
    });
    expect(res.status).toBe(200);
    const sha256 = createHash('sha256').update(body).digest('hex');
    expect(await res.json()).toEqual({ bytes: body.length, sha256 });
    expect(api.requests[0]).toMatchObject({ bodyBytes: body.length, bodySha256: sha256 });
  });

  it('streams a download whose hash matches the announced one', async () => {
    const bytes = 5 * 1024 * 1024 + 3;
    const res = await fetch(`${api.url}/download?bytes=${bytes}&seed=t`, {
      headers: { authorization: `Bearer ${await basicToken()}` },
    });
    expect(res.status).toBe(200);
    const hash = createHash('sha256');
    let received = 0;
    for await (const chunk of res.body ?? []) {
      received += chunk.length;
      hash.update(chunk);
    }
    expect(received).toBe(bytes);
    const sha256 = hash.digest('hex');
    expect(res.headers.get('x-content-sha256')).toBe(sha256);
    expect(pseudoRandomSha256(bytes, 't')).toBe(sha256);
    expect(pseudoRandomSha256(bytes, 'other')).not.toBe(sha256);
  });

  it('answers /status/:code with Retry-After and forced responses in order', async () => {
    const headers = { authorization: `Bearer ${await basicToken()}` };
    const res = await fetch(`${api.url}/status/429?retryAfter=3`, { headers });
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('3');

    api.respond401Once();
    expect((await fetch(`${api.url}/echo/a`, { headers })).status).toBe(401);
    expect((await fetch(`${api.url}/echo/a`, { headers })).status).toBe(200);

    api.forceNext({ status: 503, headers: { 'retry-after': '1' } }, 2);
    expect((await fetch(`${api.url}/echo/a`, { headers })).status).toBe(503);
    expect((await fetch(`${api.url}/echo/a`, { headers })).status).toBe(503);
    expect((await fetch(`${api.url}/echo/a`, { headers })).status).toBe(200);
  });

  it('revokes the tokens seen so far but accepts a new one', async () => {
    const old = await basicToken();
    expect(
      (await fetch(`${api.url}/echo/a`, { headers: { authorization: `Bearer ${old}` } })).status,
    ).toBe(200);
    api.revokeSeenTokens();
    expect(
      (await fetch(`${api.url}/echo/a`, { headers: { authorization: `Bearer ${old}` } })).status,
    ).toBe(401);
    const fresh = await basicToken();
    expect(
      (await fetch(`${api.url}/echo/a`, { headers: { authorization: `Bearer ${fresh}` } })).status,
    ).toBe(200);
  });

  it('waits on /slow', async () => {
    const headers = { authorization: `Bearer ${await basicToken()}` };
    const started = performance.now();
    const res = await fetch(`${api.url}/slow?ms=150`, { headers });
    expect(res.status).toBe(200);
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
  });
});

describe('upstream WAF emulation', () => {
  it('blocks request max+1 within the window and admits again once it slides', async () => {
    let now = 0; // the WAF's clock, moved by hand: the test is about the window, not the wire
    const api = await startUpstream({
      issuer: idp.issuer,
      audience: idp.audience,
      waf: { max: 5, windowMs: 400 },
      wafClock: () => now,
    });
    try {
      const headers = { authorization: `Bearer ${await basicToken()}` };
      const statuses: number[] = [];
      for (let i = 0; i < 7; i += 1) {
        statuses.push((await fetch(`${api.url}/echo/${i}`, { headers })).status);
      }
      expect(statuses).toEqual([200, 200, 200, 200, 200, 403, 403]);
      expect(api.wafBlocked).toBe(2);
      const blocked = await fetch(`${api.url}/echo/x`, { headers });
      expect(await blocked.json()).toEqual({ error: 'waf_blocked' });

      now = 399; // every hit still inside the window
      expect((await fetch(`${api.url}/echo/inside`, { headers })).status).toBe(403);
      now = 10_000; // the window has slid past all of them
      expect((await fetch(`${api.url}/echo/after`, { headers })).status).toBe(200);
    } finally {
      await api.close();
    }
  });
});

describe('process helpers', () => {
  it('hands out distinct free ports below the ephemeral range, skipping one in use', async () => {
    const [ephemeralLow] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number);
    const first = await freePort();
    // Hold the port that would come next: freePort must step over it.
    const held = createServer();
    await listen(held, first + 1, '127.0.0.1');
    try {
      const ports = [first, await freePort(), await freePort(), await freePort()];
      expect(new Set(ports).size).toBe(ports.length);
      expect(ports).not.toContain(first + 1);
      for (const port of ports) expect(port).toBeLessThan(ephemeralLow as number);
    } finally {
      await new Promise((resolve) => held.close(resolve));
    }
  });

  it('scanForSecrets finds a secret in plain and base64(id:secret) form', () => {
    const secret = 'hunter2-very-secret';
    expect(() => scanForSecrets('{"msg":"ok"}', [secret], { clientIds: ['app'] })).not.toThrow();
    expect(() => scanForSecrets(`leaked ${secret}`, [secret])).toThrow(/secret #1/);
    const basic = Buffer.from(`app:${secret}`).toString('base64');
    expect(() => scanForSecrets(`Basic ${basic}`, [secret], { clientIds: ['app'] })).toThrow(
      /base64/,
    );
  });
});
