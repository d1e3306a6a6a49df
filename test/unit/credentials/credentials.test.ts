import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdir, mkdtemp, rename, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import type { RouteConfig } from '../../../src/config/config.js';
import { envCredentials } from '../../../src/config/environment.js';
import {
  type ClientCredentials,
  CredentialError,
  readCredentials,
  splitBasic,
} from '../../../src/credentials/credentials.js';
import { Secret } from '../../../src/credentials/secret.js';
import { CredentialWatcher } from '../../../src/credentials/watcher.js';
import { createLogger } from '../../../src/log/logger.js';

const token = (
  credentials: RouteConfig['token']['credentials'],
  authMethod: RouteConfig['token']['authMethod'] = 'client_secret_basic',
) =>
  ({
    url: 'https://idp.example.test/token',
    authMethod,
    credentials,
    params: {},
    timeout: 1000,
    refreshAt: 0.8,
    minRemaining: 1000,
    retry: { min: 1000, max: 2000 },
  }) satisfies RouteConfig['token'];

async function dir(files: Record<string, string>): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'm2m-creds-'));
  for (const [name, content] of Object.entries(files)) await writeFile(join(d, name), content);
  return d;
}

describe('secrets', () => {
  it('print as [redacted] however they are printed', () => {
    const s = new Secret('hunter2');
    const holder = { s, nested: { s } };
    expect(JSON.stringify(holder)).not.toContain('hunter2');
    expect(inspect(holder, { depth: 5 })).not.toContain('hunter2');
    expect(`${s}`).toBe('[redacted]');
    expect(s.reveal()).toBe('hunter2');
  });
});

describe('reading credentials', () => {
  it('reads an authorization file with or without the Basic prefix', async () => {
    const b64 = Buffer.from('client:secret').toString('base64');
    const d = await dir({ full: `Basic ${b64}\n`, bare: `${b64}\n` });
    for (const f of ['full', 'bare']) {
      const c = await readCredentials(token({ authorizationFile: join(d, f) }), envCredentials({}));
      expect(c.kind === 'authorization' && c.authorization.reveal()).toBe(`Basic ${b64}`);
    }
  });

  it('splits an authorization value for client_secret_post', () => {
    const b64 = Buffer.from('my+client:p%40ss').toString('base64');
    const { clientId, clientSecret } = splitBasic(new Secret(`Basic ${b64}`));
    expect(clientId).toBe('my client');
    expect(clientSecret.reveal()).toBe('p@ss');
  });

  it('reads id and secret files, trimming the newline', async () => {
    const d = await dir({ id: 'client-1\n', secret: 's3cret\n' });
    const c = await readCredentials(
      token({ clientIdFile: join(d, 'id'), clientSecretFile: join(d, 'secret') }),
      envCredentials({}),
    );
    expect(c).toMatchObject({ kind: 'secret', clientId: 'client-1' });
    expect(c.kind === 'secret' && c.clientSecret.reveal()).toBe('s3cret');
  });

  it('falls back to M2M_PROXY_CLIENT_ID and M2M_PROXY_CLIENT_SECRET', async () => {
    const c = await readCredentials(
      token({}),
      envCredentials({
        M2M_PROXY_CLIENT_ID: 'env-id',
        M2M_PROXY_CLIENT_SECRET: 'env-secret',
      }),
    );
    expect(c).toMatchObject({ kind: 'secret', clientId: 'env-id' });
    await expect(readCredentials(token({}), envCredentials({}))).rejects.toThrow(
      /no credentials configured/,
    );
  });

  it.each([
    ['ec', { namedCurve: 'P-256' }, 'ES256'],
    ['ec', { namedCurve: 'P-384' }, 'ES384'],
    ['rsa', { modulusLength: 2048 }, 'RS256'],
    ['ed25519', {}, 'EdDSA'],
  ] as const)('takes the JWS algorithm from a %s key', async (type, options, alg) => {
    // biome-ignore lint/suspicious/noExplicitAny: generateKeyPairSync's overloads cannot take a union of key types
    const { privateKey } = generateKeyPairSync(type as any, options as any) as unknown as {
      privateKey: KeyObject;
    };
    const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    const d = await dir({ id: 'client', key: pem });
    const c = await readCredentials(
      token(
        { clientIdFile: join(d, 'id'), privateKeyFile: join(d, 'key'), keyId: 'k1' },
        'private_key_jwt',
      ),
      envCredentials({}),
    );
    expect(c).toMatchObject({ kind: 'private_key', clientId: 'client', alg, keyId: 'k1' });
    expect(inspect(c)).not.toContain('PRIVATE KEY');
    expect(JSON.stringify(c)).not.toContain('PRIVATE KEY');
  });

  it('refuses malformed files without echoing their content', async () => {
    const d = await dir({
      auth: 'not base64 at all!',
      key: 'SECRET-GARBAGE',
      id: 'x',
      empty: '\n',
    });
    const messages: string[] = [];
    for (const creds of [
      token({ authorizationFile: join(d, 'auth') }),
      token({ clientIdFile: join(d, 'id'), privateKeyFile: join(d, 'key') }, 'private_key_jwt'),
      token({ clientIdFile: join(d, 'id'), clientSecretFile: join(d, 'empty') }),
      token({ clientIdFile: join(d, 'id'), clientSecretFile: join(d, 'missing') }),
      token({}, 'private_key_jwt'),
    ]) {
      const err = await readCredentials(
        creds,
        envCredentials({
          M2M_PROXY_CLIENT_ID: 'a',
          M2M_PROXY_CLIENT_SECRET: 'b',
        }),
      ).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CredentialError);
      messages.push((err as Error).message);
    }
    expect(messages).toEqual([
      expect.stringContaining('does not hold "Basic base64(id:secret)"'),
      expect.stringContaining('is not a PKCS#8 PEM private key'),
      expect.stringContaining('is empty'),
      expect.stringContaining('(ENOENT)'),
      'token.credentials: private_key_jwt needs clientIdFile + privateKeyFile',
    ]);
    expect(messages.join('\n')).not.toMatch(/SECRET-GARBAGE|not base64 at all/);
  });
});

describe('credential rotation', () => {
  it('re-reads a Kubernetes secret volume when its ..data link is swapped', async () => {
    // The layout kubelet writes: ..<timestamp>/ holds the files, ..data → it, and each file name
    // is a symlink through ..data.
    const root = await mkdtemp(join(tmpdir(), 'm2m-volume-'));
    await mkdir(join(root, '..2026_11_25_01'));
    await writeFile(join(root, '..2026_11_25_01', 'client-secret'), 'old-secret');
    await writeFile(join(root, '..2026_11_25_01', 'client-id'), 'client');
    await symlink('..2026_11_25_01', join(root, '..data'));
    await symlink('..data/client-secret', join(root, 'client-secret'));
    await symlink('..data/client-id', join(root, 'client-id'));
    const config = token({
      clientIdFile: join(root, 'client-id'),
      clientSecretFile: join(root, 'client-secret'),
    });
    const initial = await readCredentials(config, envCredentials({}));

    const changes: ClientCredentials[] = [];
    const logs: string[] = [];
    let reads = 0;
    const watcher = new CredentialWatcher({
      files: [join(root, 'client-secret')],
      initial: initial,
      read: () => {
        reads += 1;
        return readCredentials(config, envCredentials({}));
      },
      onChange: (c) => changes.push(c),
      logger: createLogger('info', { write: (s: string) => logs.push(s) }),
      clock: systemClock,
    });
    try {
      await mkdir(join(root, '..2026_11_25_02'));
      await writeFile(join(root, '..2026_11_25_02', 'client-secret'), 'new-secret');
      await writeFile(join(root, '..2026_11_25_02', 'client-id'), 'client');
      await symlink('..2026_11_25_02', join(root, '..data_tmp'));
      await rename(join(root, '..data_tmp'), join(root, '..data'));
      await expect.poll(() => changes.length, { timeout: 3000 }).toBe(1);
      const c = changes[0];
      expect(c?.kind === 'secret' && c.clientSecret.reveal()).toBe('new-secret');
      // Touching the directory without changing the content re-reads the files and finds them
      // unchanged: no renewal.
      const readsBefore = reads;
      await writeFile(join(root, 'unrelated'), 'x');
      await expect.poll(() => reads, { timeout: 3000 }).toBeGreaterThan(readsBefore);
      await new Promise((r) => setTimeout(r, 50)); // let that read settle
      expect(changes).toHaveLength(1);
      expect(logs.join('')).not.toMatch(/old-secret|new-secret/);
    } finally {
      watcher.close();
    }
  });

  it('re-reads the files periodically even when no file event arrives', async () => {
    // No directory to watch: only the poll can see the change.
    const initial: ClientCredentials = {
      kind: 'secret',
      clientId: 'c',
      clientSecret: new Secret('one'),
    };
    let next = initial;
    const changes: ClientCredentials[] = [];
    const watcher = new CredentialWatcher({
      files: [],
      initial: initial,
      read: async () => next,
      onChange: (c) => changes.push(c),
      logger: createLogger('silent'),
      pollMs: 50,
      clock: systemClock,
    });
    try {
      await new Promise((r) => setTimeout(r, 200));
      expect(changes).toHaveLength(0); // the same credentials read again: no renewal
      next = { kind: 'secret', clientId: 'c', clientSecret: new Secret('two') };
      await expect.poll(() => changes.length, { timeout: 2000 }).toBe(1);
      expect(changes[0]).toBe(next);
    } finally {
      watcher.close();
    }
  });
});
