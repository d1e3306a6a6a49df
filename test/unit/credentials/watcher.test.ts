import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { RouteConfig } from '../../../src/config/config.js';
import { type ClientCredentials, readCredentials } from '../../../src/credentials/credentials.js';
import { Secret } from '../../../src/credentials/secret.js';
import { CredentialWatcher, POLL_MS } from '../../../src/credentials/watcher.js';
import { Audit } from '../../../src/log/audit.js';
import { events, memoryLogger, until, useFakeTime } from '../fakes.js';

/**
 * The credential watcher in fake time. The directory events are the one input no fake clock
 * drives (inotify delivers them whenever it likes), so `fs.watch` is replaced by a fake whose
 * listeners the test calls: a burst is then exactly the burst the test makes. Reading the files
 * stays real where the test is about reading them.
 */
const fsEvents = vi.hoisted(() => ({
  listeners: [] as Array<() => void>,
  watched: [] as string[],
}));
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const { EventEmitter } = await import('node:events');
  return {
    ...fs,
    watch: (dir: string, _options: unknown, listener: () => void) => {
      fsEvents.watched.push(dir);
      fsEvents.listeners.push(listener);
      return Object.assign(new EventEmitter(), { close: () => {} });
    },
  };
});

/** How long the watcher lets a burst settle (src/credentials/watcher.ts). */
const SETTLE_MS = 200;

const credentials = (id: string, value: string): ClientCredentials => ({
  kind: 'secret',
  clientId: id,
  clientSecret: new Secret(value),
});

/** The one place that knows how a `CredentialWatcher` is built. */
function makeWatcher(
  files: string[],
  initial: ClientCredentials,
  read: () => Promise<ClientCredentials>,
) {
  const log = memoryLogger();
  const changes: ClientCredentials[] = [];
  fsEvents.listeners.length = 0;
  fsEvents.watched.length = 0;
  const watcher = new CredentialWatcher(
    files,
    initial,
    read,
    (c) => changes.push(c),
    log.logger,
    POLL_MS,
    new Audit(log.logger, 'default'),
  );
  /** One directory event, as Kubernetes' `..data` swap makes several of. */
  const fire = () => {
    for (const listener of fsEvents.listeners) listener();
  };
  return { watcher, changes, log, fire };
}

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'm2m-watcher-'));
  useFakeTime();
});
afterEach(async () => {
  vi.useRealTimers();
  await rm(dir, { recursive: true, force: true });
});

describe('CredentialWatcher: bursts of change events', () => {
  it('reads once per burst, SETTLE_MS after its last event', async () => {
    const read = vi.fn(async () => credentials('c', 'same'));
    const t = makeWatcher([join(dir, 'client-secret')], credentials('c', 'same'), read);
    expect(fsEvents.watched).toEqual([dir]);
    for (let i = 0; i < 5; i++) {
      t.fire();
      await vi.advanceTimersByTimeAsync(SETTLE_MS / 2); // each event inside the previous one's settle time
    }
    expect(read).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(SETTLE_MS / 2 - 1);
    expect(read).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(1);
    expect(read).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(10 * SETTLE_MS);
    expect(read).toHaveBeenCalledTimes(1);
    expect(t.changes).toEqual([]); // the same credentials: nothing to renew
    t.watcher.close();
  });

  it('reports a burst that changed the credentials once, and two bursts apart twice', async () => {
    let current = credentials('c', 'two');
    const t = makeWatcher(
      [join(dir, 'client-secret')],
      credentials('c', 'one'),
      async () => current,
    );
    t.fire();
    t.fire();
    t.fire();
    await vi.advanceTimersByTimeAsync(SETTLE_MS);
    expect(t.changes).toHaveLength(1);
    current = credentials('c', 'three');
    t.fire();
    await vi.advanceTimersByTimeAsync(SETTLE_MS);
    expect(t.changes.map((c) => c.kind === 'secret' && c.clientSecret.reveal())).toEqual([
      'two',
      'three',
    ]);
    t.watcher.close();
  });

  it('after close(), neither an event nor the poll reads anything', async () => {
    const read = vi.fn(async () => credentials('c', 'other'));
    const t = makeWatcher([join(dir, 'client-secret')], credentials('c', 'same'), read);
    t.fire(); // pending when it closes
    t.watcher.close();
    t.fire(); // a late event from a watcher being closed
    await vi.advanceTimersByTimeAsync(2 * POLL_MS);
    expect(read).not.toHaveBeenCalled();
    expect(t.changes).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('CredentialWatcher: read failures', () => {
  /** A client id file and a client secret file in `dir`, read as `readCredentials` does. */
  async function secretFiles(secretValue: string) {
    const idFile = join(dir, 'client-id');
    const secretFile = join(dir, 'client-secret');
    await writeFile(idFile, 'client-1\n');
    await writeFile(secretFile, `${secretValue}\n`);
    const token = {
      credentials: { clientIdFile: idFile, clientSecretFile: secretFile },
      authMethod: 'client_secret_basic',
    } as RouteConfig['token'];
    const read = vi.fn(() => readCredentials(token, {}));
    return { idFile, secretFile, read, initial: await readCredentials(token, {}) };
  }

  /** Fires one event and waits for the (real, asynchronous) read it causes to be handled. */
  async function reload(t: ReturnType<typeof makeWatcher>, read: ReturnType<typeof vi.fn>) {
    const before = read.mock.results.length;
    t.fire();
    await vi.advanceTimersByTimeAsync(SETTLE_MS);
    await until(() => read.mock.results.length > before, 'the read');
    await Promise.resolve(read.mock.results[before]?.value).catch(() => {});
    await vi.advanceTimersByTimeAsync(0);
  }

  it('keeps the old credentials when a file is missing or unreadable, logs which, and never a secret', async () => {
    const f = await secretFiles('first-secret-value');
    const t = makeWatcher([f.idFile, f.secretFile], f.initial, f.read);
    await rm(f.secretFile); // mid-swap: the file is gone
    await reload(t, f.read);
    await mkdir(f.secretFile); // unreadable: a directory where the file was
    await reload(t, f.read);
    expect(t.changes).toEqual([]);
    const failed = events(t.log.lines, 'credentials_reload_failed');
    expect(failed).toHaveLength(2);
    expect(failed.map((l) => l.level)).toEqual([40, 40]); // warn
    expect(String(failed[0]?.err)).toContain(f.secretFile);
    expect(String(failed[0]?.err)).toContain('ENOENT');
    expect(String(failed[1]?.err)).toContain('EISDIR');
    // The old credentials were kept: when the same secret comes back, nothing has changed.
    await rm(f.secretFile, { recursive: true });
    await writeFile(f.secretFile, 'first-secret-value\n');
    await reload(t, f.read);
    expect(t.changes).toEqual([]);
    // A new one is taken.
    await writeFile(f.secretFile, 'second-secret-value\n');
    await reload(t, f.read);
    expect(t.changes).toHaveLength(1);
    const c = t.changes[0];
    expect(c?.kind === 'secret' && c.clientSecret.reveal()).toBe('second-secret-value');
    expect(events(t.log.lines, 'credentials_changed')).toHaveLength(1);
    expect(t.log.text()).not.toMatch(/first-secret-value|second-secret-value/);
    t.watcher.close();
  });

  it('keeps the old credentials when a file is malformed, without logging its content', async () => {
    const file = join(dir, 'authorization');
    // "Basic base64(id:secret)" of a value without the colon: refused.
    const malformed = `Basic ${Buffer.from('leaked-secret-no-colon').toString('base64')}`;
    await writeFile(file, `Basic ${Buffer.from('id:good-secret').toString('base64')}`);
    const token = { credentials: { authorizationFile: file } } as RouteConfig['token'];
    const read = vi.fn(() => readCredentials(token, {}));
    const t = makeWatcher([file], await readCredentials(token, {}), read);
    await writeFile(file, malformed);
    await reload(t, read);
    expect(t.changes).toEqual([]);
    expect(events(t.log.lines, 'credentials_reload_failed')).toHaveLength(1);
    expect(t.log.text()).not.toContain(malformed.slice('Basic '.length));
    expect(t.log.text()).not.toMatch(/leaked-secret-no-colon|good-secret/);
    t.watcher.close();
  });
});
