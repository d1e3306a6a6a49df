import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, runCli, scanForSecrets, type TempDir, tempDir } from '../support/process.js';

const SECRET = 'cli-secret-Hh27dPq0Lm';
const REDIS_PASSWORD = 'redis-pw-Xy81nB4s';

const portOpen = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });

describe('command line', () => {
  let dir: TempDir;
  let good: string;
  beforeAll(async () => {
    dir = await tempDir();
    const id = await dir.write('client-id', 'cli-client\n');
    const secret = await dir.write('client-secret', `${SECRET}\n`);
    const password = await dir.write('redis-password', `${REDIS_PASSWORD}\n`);
    good = await dir.write(
      'good.yaml',
      `upstream: { url: "http://127.0.0.1:1/api" }
token:
  url: http://127.0.0.1:1/token
  credentials: { clientIdFile: ${id}, clientSecretFile: ${secret} }
rateLimit:
  shared: { redis: "redis://127.0.0.1:1/0", passwordFile: ${password}, key: cli }
`,
    );
  });
  afterAll(() => dir?.remove());

  it('--check prints a summary without secrets and exits 0, contacting nothing', async () => {
    const { code, stdout, stderr } = await runCli(['--config', good, '--check']);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toContain('configuration OK');
    expect(stdout).toContain('clientId=cli-client');
    expect(stdout).toContain('password from file');
    scanForSecrets(stdout, [SECRET, REDIS_PASSWORD], { clientIds: ['cli-client'] });
  });

  it('reads the config path from M2M_PROXY_CONFIG and overrides from the environment', async () => {
    const { code, stdout } = await runCli(['--check'], {
      env: { M2M_PROXY_CONFIG: good, M2M_PROXY_RATELIMIT_PERSECOND: '2.5' },
    });
    expect(code).toBe(0);
    expect(stdout).toContain('2.5/s burst 1');
  });

  it('lists every configuration error with file:line:col and exits 2 without listening', async () => {
    const port = await freePort();
    const bad = await dir.write(
      'bad.yaml',
      `listen: { port: ${port} }
upstream: { url: "http://127.0.0.1:1/api", timeout: 30 }
token: { url: http://127.0.0.1:1/token, refreshAt: 2 }
rateLimit: { perSecnd: 6 }
`,
    );
    const { code, stderr } = await runCli(['--config', bad]);
    expect(code).toBe(2);
    expect(stderr).toContain('invalid configuration:');
    expect(stderr).toContain(`${bad}:2:44: upstream.timeout: must be a duration`);
    expect(stderr).toContain(
      `${bad}:3:41: token.refreshAt: must be a positive number of at most 1`,
    );
    expect(stderr).toContain(`${bad}:4:14: rateLimit.perSecnd: unknown key`);
    expect(await portOpen(port)).toBe(false);
  });

  it('exits 2 on a credential error, naming the file but not its content', async () => {
    const auth = await dir.write('authorization', `${SECRET} is not base64`);
    const cfg = await dir.write(
      'creds.yaml',
      `upstream: { url: "http://127.0.0.1:1/api" }
token: { url: http://127.0.0.1:1/token, credentials: { authorizationFile: ${auth} } }
`,
    );
    const { code, stderr, stdout } = await runCli(['--config', cfg, '--check']);
    expect(code).toBe(2);
    expect(stderr).toContain(`token.credentials.authorizationFile: ${auth} does not hold`);
    scanForSecrets(stderr + stdout, [SECRET]);
  });

  it('exits 2 for a missing file or an unknown flag', async () => {
    expect((await runCli(['--config', '/nonexistent.yaml'])).code).toBe(2);
    const unknown = await runCli(['--chek']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('usage: m2m-proxy [--config FILE] [--check]');
  });
});
