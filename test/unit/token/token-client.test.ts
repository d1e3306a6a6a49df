import { describe, expect, it } from 'vitest';
import { Secret } from '../../../src/credentials/secret.js';
import {
  basicAuthorization,
  jwtLifetime,
  parseTokenResponse,
  TokenRequestError,
} from '../../../src/token/client.js';

function failure(status: number, body: string): TokenRequestError {
  try {
    parseTokenResponse(status, body);
  } catch (err) {
    expect(err).toBeInstanceOf(TokenRequestError);
    return err as TokenRequestError;
  }
  throw new Error('expected a failure');
}

/** An unsigned JWT with the given claims: the client reads `exp` without verifying. */
const jwt = (claims: object) =>
  `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.`;

describe('token responses', () => {
  it('takes the lifetime from expires_in', () => {
    const t = parseTokenResponse(
      200,
      '{"access_token":"abc","token_type":"Bearer","expires_in":3600}',
    );
    expect(t.accessToken.reveal()).toBe('abc');
    expect(t.lifetimeMs).toBe(3_600_000);
    expect(
      parseTokenResponse(200, '{"access_token":"abc","token_type":"bearer","expires_in":"60"}')
        .lifetimeMs,
    ).toBe(60_000);
  });

  it("falls back to a JWT's exp when expires_in is absent", async () => {
    const exp = Math.floor(Date.now() / 1000) + 120;
    const t = parseTokenResponse(
      200,
      JSON.stringify({ access_token: jwt({ exp }), token_type: 'Bearer' }),
    );
    expect(t.lifetimeMs).toBeUndefined(); // requestToken then reads the JWT
    const lifetime = await jwtLifetime(t.accessToken.reveal(), Date.now());
    expect(lifetime).toBeGreaterThan(118_000);
    expect(lifetime).toBeLessThanOrEqual(120_000);
    expect(await jwtLifetime('opaque-token', Date.now())).toBeUndefined();
  });

  it('leaves the lifetime unknown when neither is present', () => {
    expect(
      parseTokenResponse(200, '{"access_token":"opaque","token_type":"Bearer"}').lifetimeMs,
    ).toBeUndefined();
  });

  it('classifies OAuth errors by their code and keeps the description', () => {
    const e = failure(
      401,
      '{"error":"invalid_client","error_description":"client authentication failed"}',
    );
    expect(e.reason).toBe('invalid_client');
    expect(e.status).toBe(401);
    expect(e.oauthErrorDescription).toBe('client authentication failed');
    expect(failure(400, '{"error":"invalid_scope"}').reason).toBe('invalid_scope');
  });

  it('classifies other failures by status, or as invalid_response', () => {
    expect(failure(503, '<html>down</html>').reason).toBe('http_503');
    expect(failure(500, '{"error":"Some Weird Thing!"}').reason).toBe('http_500'); // not a label we accept
    expect(failure(200, 'not json').reason).toBe('invalid_response');
    expect(failure(200, '{"token_type":"Bearer"}').reason).toBe('invalid_response');
    expect(failure(200, '{"access_token":"x","token_type":"DPoP"}').reason).toBe(
      'invalid_response',
    );
    expect(failure(200, '{"access_token":"x","expires_in":-5}').reason).toBe('invalid_response');
  });
});

describe('token responses from a hostile provider', () => {
  it.each([
    ['CRLF', 'abc\r\nX-Injected: 1'],
    ['a space', 'abc def'],
    ['non-ASCII', 'abcé'],
    ['a control character', 'abc\u0000'],
    ['padding in the middle', 'ab=c'],
  ])('refuses an access_token with %s as invalid_response', (_, token) => {
    const e = failure(200, JSON.stringify({ access_token: token, token_type: 'Bearer' }));
    expect(e.reason).toBe('invalid_response');
    expect(e.message).not.toContain(token);
  });

  it('accepts every b64token character (RFC 6750 §2.1)', () => {
    const token = 'AZaz09-._~+/==';
    expect(
      parseTokenResponse(200, JSON.stringify({ access_token: token })).accessToken.reveal(),
    ).toBe(token);
  });

  it('keeps at most 200 characters of error_description', () => {
    const e = failure(
      400,
      JSON.stringify({ error: 'invalid_scope', error_description: 'x'.repeat(5000) }),
    );
    expect(e.oauthErrorDescription).toBe('x'.repeat(200));
  });
});

describe('client_secret_basic', () => {
  it('form-encodes id and secret before base64 (RFC 6749 §2.3.1)', () => {
    const header = basicAuthorization('my client', new Secret('p@ss:w/rd+'));
    expect(Buffer.from(header.slice(6), 'base64').toString()).toBe('my+client:p%40ss%3Aw%2Frd%2B');
  });
});
