/**
 * A real OAuth 2.0 authorization server for integration tests, the demo and benchmarks:
 * `oidc-provider` issuing JWT access tokens with the client-credentials grant (RFC 6749 §4.4),
 * behind a small `node:http` front server that counts token requests and injects failures.
 *
 * @example
 * ```ts
 * const client = makeSecretClient('app', 's3cret-value', 'client_secret_basic');
 * const idp = await startIdp({ clients: [client], accessTokenTTL: 30 });
 * // ... point the proxy at idp.tokenUrl ...
 * idp.fail({ status: 503 }); // the token endpoint now answers 503
 * idp.fail(null);            // healed
 * await idp.close();
 * ```
 */
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import {
  decodeJwt,
  exportJWK,
  exportPKCS8,
  generateKeyPair,
  importPKCS8,
  type JWK,
  SignJWT,
} from 'jose';
import type { Adapter } from 'oidc-provider';
import { listen } from './process.js';

/** The client authentication methods the IdP accepts at its token endpoint (RFC 7523, OIDC Core §9). */
export type ClientAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt';

/** Client metadata as `oidc-provider` stores it (RFC 7591 names). */
export interface ClientMetadata {
  client_id: string;
  client_secret?: string;
  jwks?: { keys: JWK[] };
  token_endpoint_auth_method: ClientAuthMethod;
  grant_types: string[];
  response_types: string[];
  redirect_uris: string[];
  /** Space-separated scopes this client may request. */
  scope?: string;
}

/** A client for `private_key_jwt`, with the private half the proxy needs. */
export interface PrivateKeyClient {
  /** Register this with the IdP (`clients` option or `setClient`). */
  metadata: ClientMetadata;
  /** PKCS#8 PEM, as the proxy's `token.credentials.privateKeyFile` holds it. */
  privateKeyPem: string;
  /** The key id, as `token.credentials.keyId`. */
  kid: string;
  alg: 'ES256' | 'RS256';
  /** The public JWK registered with the IdP (carries `kid`, `alg` and `use: sig`). */
  publicJwk: JWK;
}

/** What the front server saw of one POST to the token endpoint. */
export interface TokenRequestRecord {
  /** `Date.now()` at arrival. */
  time: number;
  /** Which client authentication the request presented ("none" when it presented none). */
  authMethod: ClientAuthMethod | 'none';
  /** The client id the request named, if any (Basic user, `client_id`, or the assertion's `iss`). */
  clientId: string | undefined;
  /** The decoded form parameters, with `client_secret` and `client_assertion` replaced by `[redacted]`. */
  params: Record<string, string>;
  /** The response status; 0 while no response has been sent (e.g. under `fail({ hang: true })`). */
  status: number;
  /** The failure mode that answered instead of the provider, if any. */
  injected: 'status' | 'hang' | 'oauthError' | 'delay' | undefined;
}

/**
 * A failure to inject at the token endpoint (JWKS and discovery keep working). `times` limits it
 * to the next N token requests, after which the IdP heals by itself; without it the failure lasts
 * until `fail(null)`.
 */
export type IdpFailure =
  | { status: number; body?: string; retryAfter?: string; times?: number }
  | { hang: true; times?: number }
  | { oauthError: string; description?: string; status?: number; times?: number }
  | { delayMs: number; times?: number };

/** Options of {@link startIdp}. */
export interface IdpOptions {
  /** Access-token lifetime in seconds (the JWT's `exp - iat` and `expires_in`). Default 60. */
  accessTokenTTL?: number;
  /** Clients registered at start. More can be added with `setClient`. */
  clients?: readonly ClientMetadata[];
  /** The `aud` of every access token. Default `api://example`. */
  audience?: string;
  /** Scopes the resource server knows. Default `['read', 'write']`. */
  scopes?: readonly string[];
  /** Default `127.0.0.1`. */
  host?: string;
  /** Default 0 (a free port). */
  port?: number;
  /** Called when a token request has been answered (the demo prints renewals with it). */
  onTokenRequest?: (record: TokenRequestRecord) => void;
}

/** A running IdP. */
export interface Idp {
  /** `http://127.0.0.1:<port>`: the tokens' `iss`. */
  readonly issuer: string;
  /** `${issuer}/token` */
  readonly tokenUrl: string;
  /** `${issuer}/jwks`: verify access tokens against this. */
  readonly jwksUrl: string;
  /** The tokens' `aud`. */
  readonly audience: string;
  readonly port: number;
  /** How many POSTs reached the token endpoint (including failed and hanging ones). */
  readonly tokenRequests: number;
  /** One record per POST to the token endpoint, oldest first. */
  readonly tokenLog: readonly TokenRequestRecord[];
  /** Adds or replaces a client; a replaced secret or key stops working at once. */
  setClient(client: ClientMetadata): void;
  /** Removes a client: its next token request gets `invalid_client`. */
  removeClient(clientId: string): void;
  /** Replaces a secret client's secret (the old one stops working at once). */
  rotateSecret(clientId: string, secret: string): void;
  /** Changes the lifetime of tokens issued from now on. */
  setAccessTokenTTL(seconds: number): void;
  /** Injects a failure at the token endpoint; `null` heals. Hanging requests stay hung until `close`. */
  fail(failure: IdpFailure | null): void;
  /** Forgets the token log (not the clients). */
  resetLog(): void;
  /** Stops listening and drops every connection, hanging ones included. */
  close(): Promise<void>;
}

/**
 * Metadata of a client that authenticates with a shared secret.
 *
 * @param method `client_secret_basic` (RFC 6749 §2.3.1, HTTP Basic) or `client_secret_post`
 *   (the secret in the form body).
 */
export function makeSecretClient(
  id: string,
  secret: string,
  method: 'client_secret_basic' | 'client_secret_post' = 'client_secret_basic',
  scope = 'read write',
): ClientMetadata {
  return {
    client_id: id,
    client_secret: secret,
    token_endpoint_auth_method: method,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope,
  };
}

/**
 * A `private_key_jwt` client (RFC 7523 §2.2) with a fresh key pair: register `metadata`, give
 * the proxy `privateKeyPem` and `kid`.
 */
export async function makePrivateKeyClient(
  id: string,
  alg: 'ES256' | 'RS256' = 'ES256',
  scope = 'read write',
): Promise<PrivateKeyClient> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const kid = `${id}-${alg.toLowerCase()}-${Date.now().toString(36)}`;
  const publicJwk: JWK = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return {
    metadata: {
      client_id: id,
      jwks: { keys: [publicJwk] },
      token_endpoint_auth_method: 'private_key_jwt',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope,
    },
    privateKeyPem: await exportPKCS8(privateKey),
    kid,
    alg,
    publicJwk,
  };
}

/**
 * Warnings `oidc-provider` prints that are expected here: Node 20 is below its supported
 * runtime (it works), and the front server hands it an already-read body on purpose.
 */
const EXPECTED_WARNINGS = ['Unsupported runtime', 'already parsed request body detected'];
let warningsFiltered = false;

function filterExpectedWarnings(): void {
  if (warningsFiltered) return;
  warningsFiltered = true;
  const original = console.warn;
  console.warn = (...args: unknown[]) => {
    const first = args[0];
    if (
      typeof first === 'string' &&
      first.includes('oidc-provider WARNING') &&
      EXPECTED_WARNINGS.some((w) => first.includes(w))
    ) {
      return;
    }
    original.apply(console, args);
  };
}

let providerModule: Promise<typeof import('oidc-provider')> | undefined;

/** Imports `oidc-provider` lazily, after the warning filter is in place (it warns on import). */
function loadProvider(): Promise<typeof import('oidc-provider')> {
  filterExpectedWarnings();
  providerModule ??= import('oidc-provider');
  return providerModule;
}

interface Stored {
  payload: Record<string, unknown>;
  expiresAt: number;
}

/**
 * A minimal `oidc-provider` adapter: clients come from the caller's Map (so rotation is a Map
 * update; the provider re-reads and re-hashes client metadata on every lookup), everything else
 * (replay detection of client assertions, ...) lives in one Map with expiry.
 */
function adapterFactory(clients: Map<string, ClientMetadata>) {
  const store = new Map<string, Stored>();
  const alive = (key: string): Stored | undefined => {
    const entry = store.get(key);
    if (entry && entry.expiresAt <= Date.now()) {
      store.delete(key);
      return undefined;
    }
    return entry;
  };
  return (model: string): Adapter => ({
    async upsert(id, payload, expiresIn) {
      if (store.size > 10_000) {
        for (const key of store.keys()) alive(key);
      }
      const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
      store.set(`${model}:${id}`, { payload, expiresAt });
    },
    async find(id) {
      if (model === 'Client') {
        const client = clients.get(id);
        return client ? structuredClone({ ...client }) : undefined;
      }
      return alive(`${model}:${id}`)?.payload;
    },
    async findByUid() {
      return undefined;
    },
    async findByUserCode() {
      return undefined;
    },
    async consume(id) {
      const entry = alive(`${model}:${id}`);
      if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
    },
    async destroy(id) {
      store.delete(`${model}:${id}`);
    },
    async revokeByGrantId() {},
  });
}

/** Which client authentication a token request presents (the provider decides if it is valid). */
function seenAuth(
  headers: IncomingHttpHeaders,
  params: URLSearchParams,
): { method: ClientAuthMethod | 'none'; clientId: string | undefined } {
  const authorization = headers.authorization;
  if (authorization?.toLowerCase().startsWith('basic ')) {
    const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString('utf8');
    const user = decoded.split(':')[0] ?? '';
    return { method: 'client_secret_basic', clientId: safeDecode(user) };
  }
  const assertion = params.get('client_assertion');
  if (assertion) {
    let clientId = params.get('client_id') ?? undefined;
    try {
      const iss = decodeJwt(assertion).iss;
      clientId ??= iss;
    } catch {
      // A malformed assertion: the provider answers invalid_client; the log still records it.
    }
    return { method: 'private_key_jwt', clientId };
  }
  if (params.has('client_secret')) {
    return { method: 'client_secret_post', clientId: params.get('client_id') ?? undefined };
  }
  return { method: 'none', clientId: params.get('client_id') ?? undefined };
}

function safeDecode(s: string): string {
  try {
    // RFC 6749 §2.3.1: the id and secret are form-urlencoded before Base64.
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    return s;
  }
}

/**
 * Starts `oidc-provider` on a loopback port behind a counting, failure-injecting front server.
 * Access tokens are JWTs (RS256) with `iss`, `aud`, `exp`, `iat`, `jti`, `client_id`, `scope`.
 */
export async function startIdp(options: IdpOptions = {}): Promise<Idp> {
  const { default: Provider } = await loadProvider();
  const host = options.host ?? '127.0.0.1';
  const audience = options.audience ?? 'api://example';
  const scopes = [...(options.scopes ?? ['read', 'write'])];
  let accessTokenTTL = options.accessTokenTTL ?? 60;
  const clients = new Map<string, ClientMetadata>();
  for (const client of options.clients ?? []) clients.set(client.client_id, client);

  const tokenLog: TokenRequestRecord[] = [];
  let failure: IdpFailure | null = null;
  let failuresLeft = Number.POSITIVE_INFINITY;

  // The port is known only after listen, and the provider needs its issuer at construction:
  // the front server's handler is attached once the provider exists.
  let callback: ((req: IncomingMessage, res: ServerResponse) => void) | null = null;

  const server = createServer((req, res) => {
    if (!callback) {
      res.writeHead(503).end();
      return;
    }
    const handler = callback;
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'POST' || path !== '/token') {
      handler(req, res);
      return;
    }
    void handleToken(req, res, handler).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(err));
    });
  });

  async function handleToken(
    req: IncomingMessage,
    res: ServerResponse,
    handler: (req: IncomingMessage, res: ServerResponse) => void,
  ): Promise<void> {
    // Token requests are small forms (the provider itself caps them at 56 KiB): read the body
    // here to see the client authentication, then hand it to the provider as a parsed body.
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    const form = new URLSearchParams(body);
    const seen = seenAuth(req.headers, form);
    const params: Record<string, string> = {};
    for (const [k, v] of form) {
      params[k] = k === 'client_secret' || k === 'client_assertion' ? '[redacted]' : v;
    }
    const record: TokenRequestRecord = {
      time: Date.now(),
      authMethod: seen.method,
      clientId: seen.clientId,
      params,
      status: 0,
      injected: undefined,
    };
    tokenLog.push(record);
    res.on('finish', () => {
      record.status = res.statusCode;
      options.onTokenRequest?.(record);
    });

    const active = failure;
    if (active) {
      failuresLeft -= 1;
      if (failuresLeft <= 0) {
        failure = null;
        failuresLeft = Number.POSITIVE_INFINITY;
      }
      if ('hang' in active) {
        record.injected = 'hang';
        return; // never answered; close() drops the connection
      }
      if ('oauthError' in active) {
        record.injected = 'oauthError';
        const status = active.status ?? (active.oauthError === 'invalid_client' ? 401 : 400);
        const payload = JSON.stringify({
          error: active.oauthError,
          error_description: active.description ?? `injected ${active.oauthError}`,
        });
        res.writeHead(status, {
          'content-type': 'application/json; charset=utf-8',
          'cache-control': 'no-store',
          ...(status === 401 ? { 'www-authenticate': 'Basic realm="idp"' } : {}),
        });
        res.end(payload);
        return;
      }
      if ('delayMs' in active) {
        record.injected = 'delay';
        await new Promise((resolve) => setTimeout(resolve, active.delayMs));
        if (res.destroyed) return;
      } else {
        record.injected = 'status';
        res.writeHead(active.status, {
          'content-type': 'text/plain; charset=utf-8',
          ...(active.retryAfter !== undefined ? { 'retry-after': active.retryAfter } : {}),
        });
        res.end(active.body ?? `injected ${active.status}`);
        return;
      }
    }
    // oidc-provider accepts a body parsed by earlier middleware as `req.body` (selective_body.js).
    (req as IncomingMessage & { body?: string }).body = body;
    handler(req, res);
  }

  const port = await listen(server, options.port ?? 0, host);
  const issuer = `http://${host}:${port}`;

  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const signingJwk: JWK = {
    ...(await exportJWK(privateKey)),
    kid: `idp-${Date.now().toString(36)}`,
    alg: 'RS256',
    use: 'sig',
  };

  const provider = new Provider(issuer, {
    adapter: adapterFactory(clients),
    jwks: { keys: [signingJwk] },
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    enabledJWA: { clientAuthSigningAlgValues: ['RS256', 'PS256', 'ES256', 'EdDSA'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // Without a resource server the provider issues opaque access tokens; with one, JWTs.
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx: unknown, _client: unknown, oneOf?: string) =>
          oneOf ?? 'https://api.example.test',
        useGrantedResource: async () => true,
        getResourceServerInfo: async () => ({
          scope: scopes.join(' '),
          audience,
          accessTokenTTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    scopes,
    // Set explicitly (the resource server's accessTokenTTL wins for JWTs anyway) so the provider
    // does not print its "default ttl.ClientCredentials" notice.
    ttl: { ClientCredentials: () => accessTokenTTL },
    clockTolerance: 5,
  });
  provider.proxy = false;
  callback = provider.callback();

  return {
    issuer,
    tokenUrl: `${issuer}/token`,
    jwksUrl: `${issuer}/jwks`,
    audience,
    port,
    get tokenRequests() {
      return tokenLog.length;
    },
    tokenLog,
    setClient(client) {
      clients.set(client.client_id, client);
    },
    removeClient(clientId) {
      clients.delete(clientId);
    },
    rotateSecret(clientId, secret) {
      const client = clients.get(clientId);
      if (!client) throw new Error(`no client ${clientId}`);
      clients.set(clientId, { ...client, client_secret: secret });
    },
    setAccessTokenTTL(seconds) {
      accessTokenTTL = seconds;
    },
    fail(next) {
      failure = next;
      failuresLeft = next?.times ?? Number.POSITIVE_INFINITY;
    },
    resetLog() {
      tokenLog.length = 0;
    },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/** Credentials for {@link requestToken}, one shape per client authentication method. */
export type TokenCredentials =
  | { method: 'client_secret_basic' | 'client_secret_post'; clientId: string; secret: string }
  | {
      method: 'private_key_jwt';
      clientId: string;
      privateKeyPem: string;
      kid: string;
      alg: 'ES256' | 'RS256';
    };

/**
 * Performs a client-credentials token request (RFC 6749 §4.4.2) the way a correct client does,
 * for tests that need a token without the proxy. Never throws on an error status.
 */
export async function requestToken(
  tokenUrl: string,
  credentials: TokenCredentials,
  params: Record<string, string> = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const form = new URLSearchParams({ grant_type: 'client_credentials', ...params });
  const headers: Record<string, string> = {
    'content-type': 'application/x-www-form-urlencoded',
    accept: 'application/json',
  };
  if (credentials.method === 'private_key_jwt') {
    // RFC 7523 §3: iss = sub = client_id, aud = the token endpoint, short-lived, unique jti.
    const key = await importPKCS8(credentials.privateKeyPem, credentials.alg);
    const assertion = await new SignJWT({})
      .setProtectedHeader({ alg: credentials.alg, kid: credentials.kid })
      .setIssuer(credentials.clientId)
      .setSubject(credentials.clientId)
      .setAudience(tokenUrl)
      .setJti(crypto.randomUUID())
      .setIssuedAt()
      .setExpirationTime('60s')
      .sign(key);
    form.set('client_id', credentials.clientId);
    form.set('client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
    form.set('client_assertion', assertion);
  } else if (credentials.method === 'client_secret_basic') {
    // RFC 6749 §2.3.1: form-urlencode id and secret before Base64.
    const pair = `${encodeURIComponent(credentials.clientId)}:${encodeURIComponent(credentials.secret)}`;
    headers.authorization = `Basic ${Buffer.from(pair).toString('base64')}`;
  } else {
    form.set('client_id', credentials.clientId);
    form.set('client_secret', credentials.secret);
  }
  const res = await fetch(tokenUrl, { method: 'POST', headers, body: form });
  const text = await res.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { raw: text };
  }
  return { status: res.status, body };
}
