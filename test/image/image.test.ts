/**
 * The image, built and run for real (`npm run test:image`): the repository's own Dockerfile is
 * built with podman and the image runs as Kubernetes runs it (uid 65532, read-only root
 * filesystem, no capabilities, configuration and credentials mounted read-only) between the test
 * IdP and the token-verifying upstream on loopback.
 *
 * No image registry is reachable from CI, so the base images are local stand-ins built from
 * reachable sources and tagged with the names the Dockerfile uses (test/image/bases.sh); the
 * output says which. Run as root, it installs podman, runc and debootstrap when missing.
 */
import { execFile, spawnSync } from 'node:child_process';
import { chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Idp, makeSecretClient, startIdp } from '../../fixtures/idp.js';
import { ENTRY, imageNodeFlags, imageRuntimeEnv } from '../../fixtures/node-flags.js';
import { freePort, repoRoot, scanForSecrets } from '../../fixtures/process.js';
import { startUpstream, type Upstream } from '../../fixtures/upstream.js';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const CLIENT_ID = 'image-test-client';
const CLIENT_SECRET = 'test-secret-Zq8v4yP2nR6w';
/** The image's non-root user (distroless "nonroot"); the Dockerfile's USER. */
const UID = 65532;
/** The Dockerfile under test; `M2M_IMAGE_DOCKERFILE` points at another (e.g. a broken copy). */
const DOCKERFILE = process.env.M2M_IMAGE_DOCKERFILE ?? join(repoRoot, 'Dockerfile');
const IMAGE = 'localhost/m2m-proxy:image-test';
const CONTAINER = `m2m-proxy-image-test-${process.pid}`;

/** `FROM name[:tag]` of each stage, as podman resolves a short name (docker.io/library/...). */
function baseImages(dockerfile: string): string[] {
  const stages = new Set<string>();
  const names: string[] = [];
  for (const m of dockerfile.matchAll(/^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?/gim)) {
    const [, image, stage] = m;
    if (!image) continue;
    if (!stages.has(image.toLowerCase())) {
      const first = image.split('/')[0] ?? '';
      const qualified = !image.includes('/')
        ? `docker.io/library/${image}`
        : /[.:]/.test(first) || first === 'localhost'
          ? image
          : `docker.io/${image}`;
      if (!names.includes(qualified)) names.push(qualified);
    }
    if (stage) stages.add(stage.toLowerCase());
  }
  return names;
}

/** Installs the container tools with apt-get when missing (root only; CI machines are fresh). */
async function ensureTools(): Promise<void> {
  const missing = ['podman', 'runc', 'debootstrap'].filter(
    (tool) => spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0,
  );
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new Error(
      `${missing.join(', ')} missing; run as root (it installs them) or install them`,
    );
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  await run('apt-get', ['update', '-qq'], { env, maxBuffer: 64 * 1024 ** 2 });
  await run('apt-get', ['install', '-y', '-qq', 'podman', 'runc', 'debootstrap'], {
    env,
    maxBuffer: 64 * 1024 ** 2,
  });
}

let work: string;
/** podman with its own storage under `work` (nothing shared with the machine's images) and runc. */
let podmanArgs: string[];
let podmanEnv: NodeJS.ProcessEnv;
let idp: Idp;
let api: Upstream;
let proxyUrl: string;
let adminUrl: string;

function podman(args: string[], timeoutMs = 600_000): Promise<{ stdout: string; stderr: string }> {
  return run('podman', [...podmanArgs, ...args], {
    env: podmanEnv,
    timeout: timeoutMs,
    maxBuffer: 64 * 1024 ** 2,
  });
}

async function waitFor(url: string, status: number, timeoutMs: number): Promise<number> {
  const start = performance.now();
  let last = 'no answer';
  while (performance.now() - start < timeoutMs) {
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.status === status) return performance.now() - start;
      last = `status ${res.status}`;
    } catch (err) {
      last = String(err);
    }
    await sleep(50);
  }
  throw new Error(`${url} did not answer ${status} within ${timeoutMs} ms (${last})`);
}

beforeAll(async () => {
  await ensureTools();
  work = await mkdtemp(join(tmpdir(), 'm2m-image-'));
  // These machines refuse the default RLIMIT_NOFILE and crun's cgroup mode: no default ulimits, runc.
  await writeFile(join(work, 'containers.conf'), '[containers]\ndefault_ulimits = []\n');
  podmanEnv = { ...process.env, CONTAINERS_CONF: join(work, 'containers.conf') };
  podmanArgs = [
    '--root',
    join(work, 'storage'),
    '--runroot',
    join(work, 'runroot'),
    '--runtime',
    'runc',
  ];

  const dockerfile = await readFile(DOCKERFILE, 'utf8');
  const bases = baseImages(dockerfile);
  expect(bases.length).toBe(2);
  const [buildBase, runtimeBase] = bases as [string, string];
  const started = performance.now();
  const { stdout: basesOut } = await run(
    'bash',
    [join(repoRoot, 'test/image/bases.sh'), work, buildBase, runtimeBase],
    {
      env: { ...podmanEnv, PODMAN: `podman ${podmanArgs.join(' ')}` },
      timeout: 600_000,
      maxBuffer: 64 * 1024 ** 2,
    },
  );
  console.log(basesOut.trim());

  // The Dockerfile users build, unchanged; --pull=never: only the stand-ins above can be used.
  // --network host: its RUN steps reach the npm registry the way this machine does.
  try {
    await podman([
      'build',
      '--pull=never',
      '--network',
      'host',
      '-f',
      DOCKERFILE,
      '-t',
      IMAGE,
      repoRoot,
    ]);
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    const tail = `${e.stdout ?? ''}\n${e.stderr ?? ''}`.trim().split('\n').slice(-25).join('\n');
    throw new Error(`podman build of ${DOCKERFILE} failed:\n${tail}`);
  }
  const size = Number((await podman(['image', 'inspect', '--format', '{{.Size}}', IMAGE])).stdout);
  console.log(
    `image ${IMAGE}: ${(size / 1e6).toFixed(1)} MB (${(size / 1024 ** 2).toFixed(1)} MiB); bases and build took ${((performance.now() - started) / 1000).toFixed(0)} s`,
  );

  idp = await startIdp({
    clients: [makeSecretClient(CLIENT_ID, CLIENT_SECRET, 'client_secret_basic')],
    accessTokenTTL: 300,
  });
  api = await startUpstream({ issuer: idp.issuer, audience: idp.audience, basePath: '/api/v1' });

  // As a Kubernetes Secret and ConfigMap would appear: read-only, readable by the image's user.
  const configDir = join(work, 'config');
  const secretDir = join(work, 'secret');
  await mkdir(configDir, { mode: 0o755 });
  await mkdir(secretDir, { mode: 0o750 });
  await chown(secretDir, 0, UID);
  const basic = Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64');
  await writeFile(join(secretDir, 'authorization'), `Basic ${basic}\n`, { mode: 0o440 });
  await chown(join(secretDir, 'authorization'), 0, UID);
  const [port, adminPort] = [await freePort(), await freePort()];
  const config = {
    listen: { host: '127.0.0.1', port },
    admin: { host: '127.0.0.1', port: adminPort },
    upstream: { url: api.url, timeout: '10s' },
    token: {
      url: idp.tokenUrl,
      authMethod: 'client_secret_basic',
      credentials: { authorizationFile: '/var/run/secrets/m2m/authorization' },
      scope: 'read write',
    },
    rateLimit: { perSecond: 0, window: { max: 0 }, queue: { max: 100, timeout: '10s' } },
    log: { level: 'info' },
    shutdown: { timeout: '10s' },
  };
  // JSON is YAML. The image's M2M_PROXY_CONFIG points at this path.
  await writeFile(join(configDir, 'm2m-proxy.yaml'), JSON.stringify(config), { mode: 0o644 });
  proxyUrl = `http://127.0.0.1:${port}`;
  adminUrl = `http://127.0.0.1:${adminPort}`;

  const t0 = performance.now();
  await podman([
    'run',
    '--detach',
    '--name',
    CONTAINER,
    '--network',
    'host',
    '--user',
    `${UID}:${UID}`,
    '--read-only',
    '--cap-drop',
    'ALL',
    '--security-opt',
    'no-new-privileges',
    '--volume',
    `${configDir}:/etc/m2m-proxy:ro`,
    '--volume',
    `${secretDir}:/var/run/secrets/m2m:ro`,
    IMAGE,
  ]);
  await waitFor(`${adminUrl}/healthz`, 200, 30_000);
  const healthz = performance.now() - t0;
  await waitFor(`${adminUrl}/readyz`, 200, 30_000);
  const readyz = performance.now() - t0;
  console.log(
    `container start (podman run included): /healthz 200 after ${(healthz / 1000).toFixed(2)} s, /readyz 200 after ${(readyz / 1000).toFixed(2)} s`,
  );
}, 900_000);

afterAll(async () => {
  if (!podmanArgs) return;
  const logs = await podman(['logs', CONTAINER]).catch(() => ({ stdout: '', stderr: '' }));
  await podman(['rm', '--force', '--time', '0', CONTAINER]).catch(() => undefined);
  await podman(['rmi', '--all', '--force']).catch(() => undefined);
  await Promise.all([idp?.close(), api?.close()]);
  await rm(work, { recursive: true, force: true }).catch(() => undefined);
  // Nothing the container printed may carry the secret or a token the upstream saw.
  const tokens = (api?.requests ?? [])
    .map((r) => r.token)
    .filter((t): t is string => typeof t === 'string' && t.length > 20);
  scanForSecrets(`${logs.stdout}\n${logs.stderr}`, [CLIENT_SECRET, ...tokens], {
    clientIds: [CLIENT_ID],
  });
}, 120_000);

describe('the image', () => {
  it('runs as uid 65532 with a read-only root filesystem and no capabilities', async () => {
    const { stdout } = await podman([
      'inspect',
      '--format',
      '{{.State.Pid}} {{.HostConfig.ReadonlyRootfs}}',
      CONTAINER,
    ]);
    const [pid, readOnly] = stdout.trim().split(' ');
    expect(readOnly).toBe('true');
    // The kernel's view of the container's main process, not what podman was asked for.
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    expect(/^Uid:\s+(.*)$/m.exec(status)?.[1]?.split(/\s+/)).toEqual(Array(4).fill(String(UID)));
    expect(/^Gid:\s+(.*)$/m.exec(status)?.[1]?.split(/\s+/)).toEqual(Array(4).fill(String(UID)));
    for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) {
      expect(new RegExp(`^${set}:\\s+(\\w+)$`, 'm').exec(status)?.[1], set).toBe(
        '0000000000000000',
      );
    }
    expect(/^NoNewPrivs:\s+(\d)$/m.exec(status)?.[1]).toBe('1');
    const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    expect(cmdline).toContain(ENTRY);
    // The memory settings the footprint figures were measured with are the ones it runs with.
    const flags = imageNodeFlags(DOCKERFILE, 'node');
    expect(flags.length).toBeGreaterThan(0);
    expect(cmdline).toEqual(expect.arrayContaining(flags));
    const environ = (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
    const env = Object.entries(imageRuntimeEnv(DOCKERFILE)).map(([k, v]) => `${k}=${v}`);
    expect(env.length).toBeGreaterThan(0);
    expect(environ).toEqual(expect.arrayContaining(env));
  });

  it('answers /readyz 200 once it holds a token', async () => {
    const res = await fetch(`${adminUrl}/readyz`);
    expect(res.status).toBe(200);
  });

  it('proxies a request with the token', async () => {
    const before = api.requests.length;
    const res = await fetch(`${proxyUrl}/echo/from-image`);
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    const seen = api.requests.slice(before);
    expect(seen.map((r) => r.auth)).toEqual(['ok']);
    expect(idp.tokenRequests).toBeGreaterThanOrEqual(1);
  });

  it('drains requests in flight on SIGTERM, refuses new ones with 503, and exits 0', async () => {
    const inFlight = Array.from({ length: 5 }, (_, i) =>
      fetch(`${proxyUrl}/slow/${i}?ms=1500`).then(async (r) => {
        await r.arrayBuffer();
        return r.status;
      }),
    );
    // Wait until the upstream holds all five, so they are truly in flight.
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (api.requests.filter((r) => r.url.includes('/slow/')).length >= 5) break;
      await sleep(20);
    }
    expect(api.requests.filter((r) => r.url.includes('/slow/')).length).toBe(5);
    await podman(['kill', '--signal', 'TERM', CONTAINER]);
    await sleep(200);
    const late = await fetch(`${proxyUrl}/echo/late`);
    expect(late.status).toBe(503);
    expect(((await late.json()) as { error?: string }).error).toBe('shutting_down');
    expect(await Promise.all(inFlight)).toEqual([200, 200, 200, 200, 200]);
    const { stdout } = await podman(['wait', CONTAINER], 30_000);
    expect(stdout.trim()).toBe('0');
  });
});
