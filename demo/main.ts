/**
 * `npm run demo`: a real IdP, two real upstream APIs with a WAF each, and the built proxy in
 * front of both (two routes side by side: each API on its own port, with its own client, token
 * and budget), all on loopback, with the commands to try printed on the terminal.
 *
 * Environment (all optional): DEMO_IDP_PORT (9400), DEMO_UPSTREAM_PORT (9401),
 * DEMO_CRM_UPSTREAM_PORT (9402), DEMO_PROXY_PORT (8080), DEMO_CRM_PROXY_PORT (8081),
 * DEMO_ADMIN_PORT (9090), DEMO_TOKEN_TTL seconds (30), DEMO_AUTH_METHOD (client_secret_basic |
 * client_secret_post | private_key_jwt, for the orders API's client), DEMO_WAF_MAX (60),
 * DEMO_WAF_WINDOW_SECONDS (10).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { stringify } from 'yaml';
import {
  type ClientAuthMethod,
  type Idp,
  makePrivateKeyClient,
  makeSecretClient,
  startIdp,
} from '../fixtures/idp.js';
import {
  type ProxyProcess,
  proxyEntry,
  startProxy,
  type TempDir,
  tempDir,
} from '../fixtures/process.js';
import { startUpstream, type Upstream } from '../fixtures/upstream.js';

const env = process.env;
const intEnv = (name: string, fallback: number): number => {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer`);
  return n;
};

const HOST = '127.0.0.1';
const ports = {
  idp: intEnv('DEMO_IDP_PORT', 9400),
  upstream: intEnv('DEMO_UPSTREAM_PORT', 9401),
  crmUpstream: intEnv('DEMO_CRM_UPSTREAM_PORT', 9402),
  proxy: intEnv('DEMO_PROXY_PORT', 8080),
  crmProxy: intEnv('DEMO_CRM_PROXY_PORT', 8081),
  admin: intEnv('DEMO_ADMIN_PORT', 9090),
};
/** 30 s: short enough that background renewals show up within a minute of watching. */
const tokenTtl = intEnv('DEMO_TOKEN_TTL', 30);
/**
 * The production API's WAF allows 2000 requests per 5 minutes per IP (≈ 6.7/s). The demo scales
 * the window down 30× to 10 s and the budget to 60, so a burst trips it within seconds.
 */
const waf = {
  max: intEnv('DEMO_WAF_MAX', 60),
  windowMs: intEnv('DEMO_WAF_WINDOW_SECONDS', 10) * 1000,
};
const authMethod = (env.DEMO_AUTH_METHOD ?? 'client_secret_basic') as ClientAuthMethod;
if (!['client_secret_basic', 'client_secret_post', 'private_key_jwt'].includes(authMethod)) {
  throw new Error(
    'DEMO_AUTH_METHOD must be client_secret_basic, client_secret_post or private_key_jwt',
  );
}
const CLIENT_ID = 'demo-app';
/** The second API's own client, with the smaller budget of a smaller service. */
const CRM_CLIENT_ID = 'demo-crm';
const crmWaf = { max: Math.max(1, Math.floor(waf.max / 3)), windowMs: waf.windowMs };

const tty = process.stdout.isTTY;
const paint = (code: number) => (s: string) => (tty ? `\x1b[${code}m${s}\x1b[0m` : s);
const bold = paint(1);
const dim = paint(2);
const cyan = paint(36);
const say = (s = '') => process.stdout.write(`${s}\n`);
const tag = (who: string) => cyan(`[${who}]`.padEnd(11));

let idp: Idp | undefined;
let upstream: Upstream | undefined;
let crmUpstream: Upstream | undefined;
let proxy: ProxyProcess | undefined;
let secrets: TempDir | undefined;
let stopping = false;

/** Closes whatever has been started, in reverse order. */
async function closeServers(): Promise<void> {
  await Promise.allSettled([upstream?.close(), crmUpstream?.close(), idp?.close()]);
  await secrets?.remove();
}

async function shutdown(signal: NodeJS.Signals): Promise<void> {
  // Ctrl-C may arrive twice (from the terminal and relayed by tsx): the first one wins.
  if (stopping) return;
  stopping = true;
  say();
  say(
    `${tag('demo')}${signal}: stopping the proxy (it drains in-flight requests), then the servers`,
  );
  let code: number | null = 0;
  try {
    code = proxy ? await proxy.stop(signal, 15_000) : 0;
    say(`${tag('demo')}proxy exited with ${code === null ? 'a signal' : `code ${code}`}`);
  } catch (err) {
    say(`${tag('demo')}${err instanceof Error ? err.message : String(err)}`);
    code = 1;
  }
  await closeServers();
  process.exit(code ?? 1);
}

/** Writes the demo client's credentials as files, the way Kubernetes mounts a secret. */
async function credentialFiles(dir: TempDir, idpHandle: Idp): Promise<Record<string, string>> {
  if (authMethod === 'private_key_jwt') {
    const client = await makePrivateKeyClient(CLIENT_ID, 'ES256');
    idpHandle.setClient(client.metadata);
    return {
      clientIdFile: await dir.write('client-id', CLIENT_ID),
      privateKeyFile: await dir.write('private-key.pem', client.privateKeyPem),
      keyId: client.kid,
    };
  }
  const secret = randomBytes(24).toString('base64url');
  idpHandle.setClient(makeSecretClient(CLIENT_ID, secret, authMethod));
  if (authMethod === 'client_secret_basic') {
    const basic = Buffer.from(`${CLIENT_ID}:${secret}`).toString('base64');
    return { authorizationFile: await dir.write('authorization', `Basic ${basic}\n`) };
  }
  return {
    clientIdFile: await dir.write('client-id', CLIENT_ID),
    clientSecretFile: await dir.write('client-secret', secret),
  };
}

/** The CRM client: always a secret in an authorization file, as most providers hand out. */
async function crmCredentialFiles(dir: TempDir, idpHandle: Idp): Promise<Record<string, string>> {
  const secret = randomBytes(24).toString('base64url');
  idpHandle.setClient(makeSecretClient(CRM_CLIENT_ID, secret));
  const basic = Buffer.from(`${CRM_CLIENT_ID}:${secret}`).toString('base64');
  return { authorizationFile: await dir.write('crm-authorization', `Basic ${basic}\n`) };
}

function printTryLines(p: ProxyProcess, api: Upstream): void {
  const crm = `http://${HOST}:${ports.crmProxy}`;
  const burst = (url: string, n: number) =>
    `seq ${n} | xargs -P 10 -I{} curl -s -o /dev/null -w '%{http_code}\\n' ${url}/echo/{} | sort | uniq -c`;
  const secs = waf.windowMs / 1000;
  say();
  say(bold('m2m-proxy demo is running. Try, in another terminal:'));
  say();
  say(
    `  ${dim('# a request through the proxy: no credentials here, the proxy adds the bearer token')}`,
  );
  say(`  curl -s ${p.url}/echo/hello`);
  say();
  say(
    `  ${dim(`# the second API on its own port: another client, another token, its own budget (2/s)`)}`,
  );
  say(`  curl -s ${crm}/echo/hello`);
  say();
  say(
    `  ${dim('# both routes at once: orders drains at 6/s, crm at 2/s; neither slows the other (~15 s)')}`,
  );
  say(`  (${burst(p.url, 60)}) & (${burst(crm, 20)}); wait`);
  say(`  curl -s ${p.adminUrl}/metrics | grep 'm2m_proxy_upstream_responses_total'`);
  say();
  say(`  ${dim('# the same path straight to the API is refused: it needs a token')}`);
  say(`  curl -si ${api.url}/echo/hello`);
  say();
  say(`  ${dim('# admin endpoints')}`);
  say(`  curl -s ${p.adminUrl}/readyz`);
  say(`  curl -s ${p.adminUrl}/metrics | grep m2m_proxy`);
  say();
  say(
    `  ${dim(`# a burst of 80 through the proxy: paced to 6/s and the window, every one answered 200 (~15 s)`)}`,
  );
  say(`  ${burst(p.url, 80)}`);
  say();
  say(
    `  ${dim(`# the same burst straight to the API: 401 (no token) until the WAF blocks the address with 403`)}`,
  );
  say(`  ${burst(api.url, 80)}`);
  say(
    `  ${dim(`# (the WAF allows ${waf.max} requests per ${secs} s per client address. The proxy connects from`)}`,
  );
  say(
    `  ${dim(`#  the same 127.0.0.1, so for up to ${secs} s after that burst its requests get 403 too,`)}`,
  );
  say(`  ${dim('#  as a real WAF blocks a whole egress IP.)')}`);
  say();
  say(
    `  ${dim(`# the token lives ${tokenTtl} s and is renewed in the background: watch the [idp] lines below`)}`,
  );
  say(`  curl -s ${p.adminUrl}/metrics | grep m2m_proxy_token`);
  say();
  say(dim('Ctrl-C stops everything. The proxy log follows.'));
  say();
}

async function main(): Promise<void> {
  if (!existsSync(proxyEntry)) {
    say(`${proxyEntry} is missing: run \`npm run demo\` (it builds first) or \`npm run build\`.`);
    process.exit(1);
  }
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  // Never leave a detached proxy behind, whatever ends this process.
  process.on('exit', () => proxy?.kill());

  try {
    idp = await startIdp({
      host: HOST,
      port: ports.idp,
      accessTokenTTL: tokenTtl,
      onTokenRequest: (r) =>
        say(
          `${tag('idp')}token request from ${r.clientId ?? '?'} (${r.authMethod}) → ${r.status}` +
            (r.status === 200 ? `, valid ${tokenTtl} s` : ''),
        ),
    });
    upstream = await startUpstream({
      host: HOST,
      port: ports.upstream,
      issuer: idp.issuer,
      audience: idp.audience,
      basePath: '/api/v1',
      waf,
    });
    crmUpstream = await startUpstream({
      host: HOST,
      port: ports.crmUpstream,
      issuer: idp.issuer,
      audience: idp.audience,
      basePath: '/crm',
      waf: crmWaf,
    });
  } catch (err) {
    const inUse = err instanceof Error && 'code' in err && err.code === 'EADDRINUSE';
    say(
      inUse
        ? `A demo port is already in use (${(err as Error).message}). Set DEMO_IDP_PORT, DEMO_UPSTREAM_PORT, DEMO_CRM_UPSTREAM_PORT, DEMO_PROXY_PORT, DEMO_CRM_PROXY_PORT or DEMO_ADMIN_PORT.`
        : `Could not start the demo servers: ${String(err)}`,
    );
    await closeServers();
    process.exit(1);
  }

  secrets = await tempDir('m2m-proxy-demo-');
  const credentials = await credentialFiles(secrets, idp);
  const crmCredentials = await crmCredentialFiles(secrets, idp);
  // A function, not a shared object: the printed YAML shows each route's block in full.
  const token = () => ({
    url: (idp as Idp).tokenUrl,
    scope: 'read write',
    refreshAt: 0.8,
    // The default 30 s would be the whole lifetime of the demo's 30 s token.
    minRemaining: '5s',
    retry: { min: '1s', max: '10s' },
  });
  /** Paced to `perSecond` and kept under a WAF's window, with a margin for timing differences. */
  const rateLimit = (perSecond: number, budget: typeof waf) => ({
    perSecond,
    burst: 1,
    window: { max: Math.max(1, Math.floor(budget.max * 0.85)), length: `${budget.windowMs}ms` },
    queue: { max: 1000, timeout: '30s' },
  });
  const config = {
    listen: { host: HOST },
    admin: { host: HOST, port: ports.admin },
    routes: [
      {
        name: 'orders',
        listen: { port: ports.proxy },
        upstream: { url: upstream.url, timeout: '30s' },
        token: { ...token(), authMethod, credentials },
        rateLimit: rateLimit(6, waf),
      },
      {
        name: 'crm',
        listen: { port: ports.crmProxy },
        upstream: { url: (crmUpstream as Upstream).url, timeout: '30s' },
        token: { ...token(), credentials: crmCredentials },
        rateLimit: rateLimit(2, crmWaf),
      },
    ],
    log: { level: 'info' },
    shutdown: { timeout: '5s' },
  };

  say(bold('m2m-proxy demo'));
  say(
    `${tag('idp')}${idp.issuer}  token endpoint ${idp.tokenUrl}, client ${CLIENT_ID} (${authMethod})`,
  );
  say(
    `${tag('upstream')}${upstream.url}  verifies tokens against ${idp.jwksUrl}; WAF ${waf.max} per ${waf.windowMs / 1000} s per address`,
  );
  say(
    `${tag('upstream')}${(crmUpstream as Upstream).url}  (CRM) client ${CRM_CLIENT_ID}; WAF ${crmWaf.max} per ${crmWaf.windowMs / 1000} s per address`,
  );
  say(`${tag('demo')}credentials written to ${secrets.path}`);
  say(`${tag('demo')}proxy configuration:`);
  for (const line of stringify(config).trimEnd().split('\n')) say(dim(`    ${line}`));
  say();

  try {
    proxy = await startProxy({
      config,
      // Its own process group: Ctrl-C reaches only the demo, which forwards it and waits.
      detached: true,
      readyTimeoutMs: 15_000,
      onLine: (line, stream) => {
        if (stream === 'stdout') say(line);
        else process.stderr.write(`${line}\n`);
      },
    });
  } catch (err) {
    say(
      `${tag('demo')}the proxy did not start: ${err instanceof Error ? err.message : String(err)}`,
    );
    await closeServers();
    process.exit(1);
  }
  const started = proxy;
  void started.exited.then(async (code) => {
    if (stopping) return;
    stopping = true;
    say(`${tag('demo')}the proxy exited on its own with ${code}; stopping the servers`);
    await closeServers();
    process.exit(code === 0 ? 0 : 1);
  });
  printTryLines(started, upstream);
}

await main();
