import { randomUUID } from 'node:crypto';
import type { Dispatcher } from 'undici';
import type { Clock } from '../clock.js';
import type { RouteConfig } from '../config/config.js';
import { type ClientCredentials, splitBasic } from '../credentials/credentials.js';
import { Secret } from '../credentials/secret.js';
import { M2mError } from '../errors.js';
import { request } from '../undici.js';

/** A token as the identity provider issued it. */
export interface IssuedToken {
  readonly accessToken: Secret;
  /**
   * Lifetime in ms from `expires_in`, else from the JWT's `exp`; `undefined` when the response
   * tells neither (the manager then assumes a default, see `DEFAULT_LIFETIME_MS`).
   */
  readonly lifetimeMs: number | undefined;
  /** The granted `scope` when the provider returned one (RFC 6749 §5.1), for the audit trail. */
  readonly scope?: string | undefined;
}

/** The failure classes of `m2m_proxy_token_refresh_failures_total{reason}` (docs/metrics.md). */
export type FailureReason =
  | 'timeout'
  | 'network'
  | 'invalid_response'
  | `http_${number}`
  | (string & {});

/**
 * A token request failed. `reason` is the metric label: the OAuth `error` code when the
 * provider sent one (RFC 6749 §5.2), else `http_<status>`, `timeout`, `network` or
 * `invalid_response`. Nothing in it comes from the request, so it never holds a credential.
 */
export class TokenRequestError extends M2mError {
  readonly code = 'token_request_failed';
  readonly reason: FailureReason;
  readonly status: number | undefined;
  readonly oauthError: string | undefined;
  readonly oauthErrorDescription: string | undefined;

  constructor(
    reason: FailureReason,
    message: string,
    details: { status?: number; error?: string; description?: string } = {},
  ) {
    super(message);
    this.reason = reason;
    this.status = details.status;
    this.oauthError = details.error;
    this.oauthErrorDescription = details.description;
  }
}

/**
 * jose is loaded on first use: only `private_key_jwt` and tokens without `expires_in` need it,
 * and the sidecar's resident memory is part of what it costs its pod (about 3.4 MB).
 */
const loadJose = () => import('jose');

/** The assertion of RFC 7523 §3 lives this long: enough for clock skew, too short to replay. */
const ASSERTION_LIFETIME_S = 60;
/** OAuth error codes are ASCII words; anything else would blow up the metric's label set. */
const OAUTH_ERROR_CODE = /^[a-z][a-z0-9_]{0,63}$/;

/** RFC 6750 §2.1: the only characters a bearer token may hold. */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;
/** The provider's `error_description` is free text from outside: logged, but no more than this. */
const MAX_DESCRIPTION_CHARS = 200;

/** Anything that can obtain a token (the real client, or a fake in unit tests). */
export interface TokenSource {
  requestToken(credentials: ClientCredentials): Promise<IssuedToken>;
}

/** What a `TokenClient` is built from. */
export interface TokenClientDeps {
  /** The route's token block. */
  config: RouteConfig['token'];
  /** For the assertion's `iat`/`exp` and a JWT's remaining lifetime. */
  clock: Clock;
  /** The HTTP client; undici's global dispatcher when absent. */
  dispatcher?: Dispatcher | undefined;
}

/**
 * The client-credentials grant (RFC 6749 §4.4) against `token.url`, with
 * `client_secret_basic` (§2.3.1), `client_secret_post` (§2.3.1) or `private_key_jwt`
 * (RFC 7523 §2.2, OpenID Connect Core §9).
 */
export class TokenClient implements TokenSource {
  readonly #config: RouteConfig['token'];
  readonly #clock: Clock;
  readonly #dispatcher: Dispatcher | undefined;

  constructor(deps: TokenClientDeps) {
    this.#config = deps.config;
    this.#clock = deps.clock;
    this.#dispatcher = deps.dispatcher;
  }

  async requestToken(credentials: ClientCredentials): Promise<IssuedToken> {
    const form = new URLSearchParams(this.#config.params);
    form.set('grant_type', 'client_credentials');
    if (this.#config.scope) form.set('scope', this.#config.scope);
    if (this.#config.audience) form.set('audience', this.#config.audience);
    if (this.#config.resource) form.set('resource', this.#config.resource);
    const headers: Record<string, string> = {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    };
    await this.#authenticate(credentials, form, headers);

    let status: number;
    let text: string;
    try {
      const res = await request(this.#config.url, {
        method: 'POST',
        headers,
        body: form.toString(),
        signal: AbortSignal.timeout(this.#config.timeout),
        ...(this.#dispatcher ? { dispatcher: this.#dispatcher } : {}),
      });
      status = res.statusCode;
      text = await res.body.text();
    } catch (err) {
      const name = err instanceof Error ? err.name : 'error';
      if (name === 'TimeoutError' || name === 'AbortError') {
        throw new TokenRequestError(
          'timeout',
          `no answer from the token endpoint within ${this.#config.timeout} ms`,
        );
      }
      throw new TokenRequestError(
        'network',
        `token endpoint unreachable: ${(err as NodeJS.ErrnoException).code ?? name}`,
      );
    }
    const issued = parseTokenResponse(status, text);
    if (issued.lifetimeMs !== undefined) return issued;
    return {
      ...issued,
      lifetimeMs: await jwtLifetime(issued.accessToken.reveal(), this.#clock.now()),
    };
  }

  async #authenticate(
    c: ClientCredentials,
    form: URLSearchParams,
    headers: Record<string, string>,
  ): Promise<void> {
    const method = this.#config.authMethod;
    if (method === 'private_key_jwt') {
      if (c.kind !== 'private_key')
        throw new TokenRequestError('invalid_response', 'private_key_jwt needs a private key');
      form.set('client_id', c.clientId);
      form.set('client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
      form.set('client_assertion', await this.#assertion(c));
      return;
    }
    if (c.kind === 'private_key')
      throw new TokenRequestError('invalid_response', `${method} needs a client secret`);
    if (method === 'client_secret_basic') {
      headers.authorization =
        c.kind === 'authorization'
          ? c.authorization.reveal()
          : basicAuthorization(c.clientId, c.clientSecret);
      return;
    }
    const { clientId, clientSecret } = c.kind === 'authorization' ? splitBasic(c.authorization) : c;
    form.set('client_id', clientId);
    form.set('client_secret', clientSecret.reveal());
  }

  async #assertion(c: Extract<ClientCredentials, { kind: 'private_key' }>): Promise<string> {
    const { SignJWT } = await loadJose();
    const now = Math.floor(this.#clock.now() / 1000);
    return new SignJWT({})
      .setProtectedHeader({ alg: c.alg, typ: 'JWT', ...(c.keyId ? { kid: c.keyId } : {}) })
      .setIssuer(c.clientId)
      .setSubject(c.clientId)
      .setAudience(this.#config.url)
      .setJti(randomUUID())
      .setIssuedAt(now)
      .setExpirationTime(now + ASSERTION_LIFETIME_S)
      .sign(c.key);
  }
}

/** RFC 6749 §2.3.1: id and secret are form-encoded before they are joined and base64-encoded. */
export function basicAuthorization(clientId: string, clientSecret: Secret): string {
  const enc = (s: string) => new URLSearchParams({ v: s }).toString().slice(2);
  return `Basic ${Buffer.from(`${enc(clientId)}:${enc(clientSecret.reveal())}`).toString('base64')}`;
}

/** Interprets the token endpoint's answer (RFC 6749 §5.1 success, §5.2 error). */
export function parseTokenResponse(status: number, text: string): IssuedToken {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const json =
    typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : undefined;
  if (status !== 200) {
    const error = typeof json?.error === 'string' ? json.error : undefined;
    const description =
      typeof json?.error_description === 'string'
        ? json.error_description.slice(0, MAX_DESCRIPTION_CHARS)
        : undefined;
    const reason = error && OAUTH_ERROR_CODE.test(error) ? error : `http_${status}`;
    throw new TokenRequestError(
      reason,
      `token endpoint answered ${status}${error ? ` ${error}` : ''}`,
      {
        status,
        ...(error ? { error } : {}),
        ...(description ? { description } : {}),
      },
    );
  }
  const invalid = (why: string) =>
    new TokenRequestError('invalid_response', `token response ${why}`, { status });
  if (!json) throw invalid('is not a JSON object');
  const accessToken = json.access_token;
  if (typeof accessToken !== 'string' || accessToken === '') throw invalid('has no access_token');
  // It goes into an Authorization header: CR/LF, spaces or non-ASCII would break or split it.
  if (!B64TOKEN.test(accessToken)) throw invalid('has an access_token that is not a b64token');
  // RFC 6749 §5.1 makes token_type required; some providers omit it, and then Bearer is meant.
  if (json.token_type !== undefined && String(json.token_type).toLowerCase() !== 'bearer') {
    throw invalid(
      `has token_type ${JSON.stringify(String(json.token_type).slice(0, 20))}, not Bearer`,
    );
  }
  const scope = typeof json.scope === 'string' && json.scope !== '' ? json.scope : undefined;
  // Without expires_in the lifetime stays unknown here; `requestToken` then reads a JWT's `exp`.
  if (json.expires_in === undefined)
    return { accessToken: new Secret(accessToken), lifetimeMs: undefined, scope };
  const seconds = Number(json.expires_in);
  if (!Number.isFinite(seconds) || seconds <= 0) {
    throw invalid('has an expires_in that is not a positive number');
  }
  return { accessToken: new Secret(accessToken), lifetimeMs: seconds * 1000, scope };
}

/**
 * Remaining lifetime at `now` (epoch ms) from a JWT access token's `exp`, read without
 * verification (it is not ours to verify).
 */
export async function jwtLifetime(token: string, now: number): Promise<number | undefined> {
  const { decodeJwt } = await loadJose();
  try {
    const { exp } = decodeJwt(token);
    return typeof exp === 'number' ? exp * 1000 - now : undefined;
  } catch {
    return undefined;
  }
}
