import { randomBytes } from 'node:crypto';
import {
  type ClientMetadata,
  type Idp,
  makePrivateKeyClient,
  makeSecretClient,
  startIdp,
} from '../../fixtures/idp.js';
import {
  freePort,
  type ProxyProcess,
  scanForSecrets,
  startProxy,
  type TempDir,
  tempDir,
} from '../../fixtures/process.js';
import { type RedisServer, startRedis } from '../../fixtures/redis.js';
import { startUpstream, type Upstream } from '../../fixtures/upstream.js';

/** The secret every test client uses; the output of every test is scanned for it. */
export const CLIENT_SECRET = 'test-secret-Zq8v4yP2nR6w';
export const CLIENT_ID = 'proxy-test-client';

export type AuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt';

export interface WorldOptions {
  method?: AuthMethod;
  /** Access token lifetime at the IdP, in seconds. */
  ttl?: number;
  /** Merged over the generated proxy configuration, section by section. */
  proxy?: Record<string, Record<string, unknown>>;
  /** Use files `clientIdFile` + `clientSecretFile` instead of an `authorizationFile`. */
  separateFiles?: boolean;
  env?: Record<string, string>;
}

/** A real IdP, a real token-verifying upstream and the real proxy process between them. */
export interface World {
  idp: Idp;
  api: Upstream;
  proxy: ProxyProcess;
  dir: TempDir;
  /** Every secret this world knows: the client secret, the private key, each token the API saw. */
  secrets(): string[];
  /** Stops everything and asserts that nothing the proxy printed contains a secret. */
  close(): Promise<void>;
}

/**
 * The configuration of a proxy between `idp` and `api` on free loopback ports, pacing off;
 * `overrides` are merged over it section by section.
 */
export async function proxyConfig(
  idp: Idp,
  api: Upstream,
  method: AuthMethod,
  credentials: Record<string, string>,
  overrides: Record<string, Record<string, unknown>> = {},
): Promise<Record<string, Record<string, unknown>>> {
  const base: Record<string, Record<string, unknown>> = {
    listen: { host: '127.0.0.1', port: await freePort() },
    admin: { host: '127.0.0.1', port: await freePort() },
    upstream: { url: api.url, timeout: '5s' },
    token: {
      url: idp.tokenUrl,
      authMethod: method,
      credentials,
      scope: 'read write',
      timeout: '2s',
    },
    rateLimit: { perSecond: 0, window: { max: 0 }, queue: { max: 1000, timeout: '5s' } },
    log: { level: 'debug' },
    shutdown: { timeout: '5s' },
  };
  for (const [section, values] of Object.entries(overrides)) {
    base[section] = { ...base[section], ...values };
  }
  return base;
}

export async function startWorld(options: WorldOptions = {}): Promise<World> {
  const method = options.method ?? 'client_secret_basic';
  const dir = await tempDir();
  const secrets = [CLIENT_SECRET];
  const credentials: Record<string, string> = {};
  let client: ClientMetadata[];
  if (method === 'private_key_jwt') {
    const key = await makePrivateKeyClient(CLIENT_ID);
    secrets.push(key.privateKeyPem.split('\n').slice(1, -2).join(''));
    client = [key.metadata];
    credentials.clientIdFile = await dir.write('client-id', CLIENT_ID);
    credentials.privateKeyFile = await dir.write('private-key.pem', key.privateKeyPem);
    credentials.keyId = key.kid;
  } else {
    client = [makeSecretClient(CLIENT_ID, CLIENT_SECRET, method)];
    if (options.separateFiles || method === 'client_secret_post') {
      credentials.clientIdFile = await dir.write('client-id', `${CLIENT_ID}\n`);
      credentials.clientSecretFile = await dir.write('client-secret', `${CLIENT_SECRET}\n`);
    } else {
      const basic = Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64');
      credentials.authorizationFile = await dir.write('authorization', `Basic ${basic}\n`);
    }
  }
  const idp = await startIdp({ clients: client, accessTokenTTL: options.ttl ?? 60 });
  const api = await startUpstream({
    issuer: idp.issuer,
    audience: idp.audience,
    basePath: '/api/v1',
  });
  const base = await proxyConfig(idp, api, method, credentials, options.proxy);
  const proxy = await startProxy({ config: base, ...(options.env ? { env: options.env } : {}) });
  const allSecrets = () => [
    ...secrets,
    ...api.requests
      .map((r) => r.token)
      .filter((t): t is string => typeof t === 'string' && t.length > 20),
  ];
  return {
    idp,
    api,
    proxy,
    dir,
    secrets: allSecrets,
    async close() {
      const known = allSecrets();
      proxy.kill(); // a no-op when the test already stopped it
      await proxy.exited;
      await Promise.all([api.close(), idp.close()]);
      await dir.remove();
      scanForSecrets([...proxy.stdout, ...proxy.stderr].join('\n'), known, {
        clientIds: [CLIENT_ID],
      });
    },
  };
}

/**
 * What a fleet of proxy processes shares: a real `redis-server` with a password, a real IdP and a
 * token-verifying upstream. The replicas are started by each test (`config` gives one's
 * configuration) and pushed on `proxies`, for `close` to stop.
 */
export interface FleetWorld {
  redis: RedisServer;
  redisPassword: string;
  idp: Idp;
  api: Upstream;
  /** The Redis password, as Kubernetes mounts a secret: with a trailing newline. */
  passwordFile: string;
  /** The client's `Authorization: Basic` value, in a file. */
  authorizationFile: string;
  /** Every replica the test started. */
  proxies: ProxyProcess[];
  /** A replica's configuration (pacing off, `debug` log) with `overrides` merged over it. */
  config(
    overrides: Record<string, Record<string, unknown>>,
  ): Promise<Record<string, Record<string, unknown>>>;
  /**
   * Kills every replica and stops the servers, then asserts that nothing any replica printed
   * contains the client secret, the Redis password or a token.
   */
  close(): Promise<void>;
}

export async function startFleetWorld(prefix: string): Promise<FleetWorld> {
  const redisPassword = `redis-pw-${randomBytes(16).toString('hex')}`;
  const [redis, idp, dir] = await Promise.all([
    startRedis({ password: redisPassword }),
    startIdp({
      clients: [makeSecretClient(CLIENT_ID, CLIENT_SECRET, 'client_secret_basic')],
      accessTokenTTL: 300,
    }),
    tempDir(prefix),
  ]);
  const api = await startUpstream({
    issuer: idp.issuer,
    audience: idp.audience,
    basePath: '/api/v1',
  });
  const passwordFile = await dir.write('redis-password', `${redisPassword}\n`);
  const basic = Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64');
  const authorizationFile = await dir.write('authorization', `Basic ${basic}\n`);
  const proxies: ProxyProcess[] = [];
  return {
    redis,
    redisPassword,
    idp,
    api,
    passwordFile,
    authorizationFile,
    proxies,
    config: (overrides) =>
      proxyConfig(idp, api, 'client_secret_basic', { authorizationFile }, overrides),
    async close() {
      for (const proxy of proxies) proxy.kill();
      await Promise.all(proxies.map((p) => p.exited));
      await Promise.all([api.close(), idp.close(), redis.stop()]);
      await dir.remove();
      const output = proxies.flatMap((p) => [...p.stdout, ...p.stderr]).join('\n');
      const tokens = api.requests
        .map((r) => r.token)
        .filter((t): t is string => (t?.length ?? 0) > 20);
      scanForSecrets(output, [CLIENT_SECRET, redisPassword, ...new Set(tokens)], {
        clientIds: [CLIENT_ID],
      });
    },
  };
}
