import { readFileSync } from 'node:fs';
import { chmod, readFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  freePort,
  listen,
  runCli,
  scanForSecrets,
  startProxy,
  type TempDir,
  tempDir,
} from '../../fixtures/process.js';

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

/** Preloads a spy that reports every `listen()` of the child on its stderr. */
const SPY = {
  NODE_OPTIONS: `--import ${fileURLToPath(new URL('../support/listen-spy.mjs', import.meta.url))}`,
};

/** No stack trace: no `    at ` frame and no `Error:` line with a file path. */
const noStack = (text: string) => expect(text).not.toMatch(/^\s+at |\.js:\d+:\d+/m);

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
    const { code, stderr } = await runCli(['--config', bad], { env: SPY });
    expect(code).toBe(2);
    expect(stderr).not.toContain('LISTEN-SPY'); // not a single listen() call, however brief
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

  it('--version prints the package version and exits 0', async () => {
    const { version } = JSON.parse(
      readFileSync(new URL('../../package.json', import.meta.url), 'utf8'),
    ) as {
      version: string;
    };
    const { code, stdout } = await runCli(['--version']);
    expect(code).toBe(0);
    expect(stdout).toBe(`m2m-proxy ${version}\n`);
  });

  it('refuses a YAML alias bomb with exit 2 and one line, no stack trace', async () => {
    const levels = ['a: &a [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 9; i++) {
      const prev = String.fromCharCode(96 + i);
      const next = String.fromCharCode(97 + i);
      levels.push(`${next}: &${next} [${Array(10).fill(`*${prev}`).join(', ')}]`);
    }
    const bomb = await dir.write('bomb.yaml', `${levels.join('\n')}\n`);
    const { code, stderr } = await runCli(['--config', bomb, '--check']);
    expect(code).toBe(2);
    noStack(stderr);
    expect(stderr.trim().split('\n')).toEqual([
      'invalid configuration:',
      expect.stringMatching(/alias/i),
    ]);
  });

  it('--check reads and parses upstream.caFile', async () => {
    const cases: [string, RegExp][] = [
      [`${dir.path}/missing-ca.pem`, /upstream\.caFile: cannot read .*missing-ca\.pem \(ENOENT\)/],
      [
        await dir.write('not-a-ca.pem', 'hello\n'),
        /upstream\.caFile: .*not-a-ca\.pem is not a PEM bundle/,
      ],
      [
        await dir.write(
          'broken-ca.pem',
          '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n',
        ),
        /upstream\.caFile: .*broken-ca\.pem is not a PEM bundle/,
      ],
    ];
    for (const [caFile, message] of cases) {
      const cfg = await dir.write(
        'ca.yaml',
        (await readFile(good, 'utf8')).replace(
          'upstream: { url: "http://127.0.0.1:1/api" }',
          `upstream: { url: "http://127.0.0.1:1/api", caFile: ${caFile} }`,
        ),
      );
      const { code, stderr } = await runCli(['--config', cfg, '--check']);
      expect(code, caFile).toBe(2);
      expect(stderr).toMatch(message);
      noStack(stderr);
    }
  });

  it('refuses credentials in URLs and never prints them', async () => {
    const cfg = await dir.write(
      'url-secrets.yaml',
      `upstream: { url: "http://id:${SECRET}@127.0.0.1:1/api" }
token:
  url: "http://127.0.0.1:1/token?client_secret=${SECRET}"
  credentials: { clientIdFile: ${dir.path}/client-id, clientSecretFile: ${dir.path}/client-secret }
rateLimit:
  shared: { redis: "redis://127.0.0.1:1/0?password=${REDIS_PASSWORD}", key: cli }
`,
    );
    const { code, stdout, stderr } = await runCli(['--config', cfg, '--check']);
    expect(code).toBe(2);
    expect(stderr).toContain('upstream.url: must not contain a user or password');
    expect(stderr).toContain(
      'token.url: must not carry the secret query parameter "client_secret"',
    );
    expect(stderr).toContain(
      'rateLimit.shared.redis: must not carry the secret query parameter "password"',
    );
    scanForSecrets(stdout + stderr, [SECRET, REDIS_PASSWORD]);
  });

  it('reports configuration and credential errors together, every one of them', async () => {
    const cfg = await dir.write(
      'both.yaml',
      `upstream: { url: "http://127.0.0.1:1/api", timeout: soon }
token:
  url: http://127.0.0.1:1/token
  credentials: { clientIdFile: ${dir.path}/no-id, clientSecretFile: ${dir.path}/no-secret }
`,
    );
    const { code, stderr } = await runCli(['--config', cfg, '--check']);
    expect(code).toBe(2);
    expect(stderr).toContain('upstream.timeout: must be a duration');
    expect(stderr).toMatch(/token\.credentials\.clientIdFile: cannot read .*no-id \(ENOENT\)/);
    expect(stderr).toMatch(
      /token\.credentials\.clientSecretFile: cannot read .*no-secret \(ENOENT\)/,
    );
  });

  it('exits 2 naming the key when a port is in use, leaving nothing listening', async () => {
    const blocker = createServer();
    const busy = await listen(blocker, 0, '127.0.0.1');
    const admin = await freePort();
    try {
      const cfg = await dir.write(
        'busy.yaml',
        `${await readFile(good, 'utf8')}listen: { port: ${busy} }\nadmin: { host: 127.0.0.1, port: ${admin} }\n`,
      );
      const { code, stderr } = await runCli(['--config', cfg], { env: SPY });
      expect(code).toBe(2);
      expect(stderr).toContain(`listen.port / listen.host: 127.0.0.1:${busy} is already in use`);
      noStack(stderr.replace(/^LISTEN-SPY .*$/gm, ''));
      expect(await portOpen(admin)).toBe(false);
    } finally {
      blocker.close();
    }
  });

  it('warns once at start-up, and in --check, about secret files every user can read', async () => {
    const id = await dir.write('open-id', 'cli-client\n', 0o644);
    const secret = await dir.write('open-secret', `${SECRET}\n`, 0o644);
    await chmod(secret, 0o644);
    const config = {
      listen: { port: await freePort() },
      admin: { host: '127.0.0.1', port: await freePort() },
      upstream: { url: 'http://127.0.0.1:1/api' },
      token: {
        url: 'http://127.0.0.1:1/token',
        credentials: { clientIdFile: id, clientSecretFile: secret },
      },
    };
    const cfg = await dir.write('open.yaml', JSON.stringify(config));
    const check = await runCli(['--config', cfg, '--check']);
    expect(check.code).toBe(0);
    expect(check.stdout).toContain(`warning:     ${secret} is readable by every user`);
    const proxy = await startProxy({ config });
    try {
      const line = await proxy.waitForLog((l) => l.event === 'secret_files_world_readable');
      expect(line.files).toEqual([id, secret]);
      expect(proxy.logs.filter((l) => l.event === 'secret_files_world_readable')).toHaveLength(1);
    } finally {
      await proxy.stop();
    }
    scanForSecrets([...proxy.stdout, ...proxy.stderr, check.stdout].join('\n'), [SECRET], {
      clientIds: ['cli-client'],
    });
  });

  it('exits 2 for a missing file or an unknown flag', async () => {
    expect((await runCli(['--config', '/nonexistent.yaml'])).code).toBe(2);
    const unknown = await runCli(['--chek']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('usage: m2m-proxy [--config FILE] [--check]');
  });
});
