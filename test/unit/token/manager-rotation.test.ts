import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import type { ClientCredentials } from '../../../src/credentials/credentials.js';
import { Secret } from '../../../src/credentials/secret.js';
import {
  type IssuedToken,
  TokenRequestError,
  type TokenSource,
} from '../../../src/token/client.js';
import { TokenManager } from '../../../src/token/manager.js';
import {
  answerOf,
  type Deferred,
  deferred,
  memoryLogger,
  routeMetrics,
  TOKEN_CONFIG,
  useFakeTime,
} from '../fakes.js';

/**
 * The token manager while its credentials rotate and while it stops: a token endpoint whose
 * every answer the test gives by hand, in fake time.
 */

const secret = (id: string, value: string): ClientCredentials => ({
  kind: 'secret',
  clientId: id,
  clientSecret: new Secret(value),
});
const OLD = secret('client', 'old-secret-value');
const NEW = secret('client', 'new-secret-value');

/** A token endpoint that answers each request when the test says so. */
class ManualSource implements TokenSource {
  readonly calls: Array<{ credentials: ClientCredentials; answer: Deferred<IssuedToken> }> = [];
  requestToken(credentials: ClientCredentials): Promise<IssuedToken> {
    const answer = deferred<IssuedToken>();
    this.calls.push({ credentials, answer });
    return answer.promise;
  }
  /** Answers request `i` with a token living `lifetimeMs`. */
  issue(i: number, token: string, lifetimeMs = 600_000): void {
    this.calls[i]?.answer.resolve({ accessToken: new Secret(token), lifetimeMs });
  }
  fail(i: number): void {
    this.calls[i]?.answer.reject(new TokenRequestError('http_503', 'token endpoint answered 503'));
  }
  secretOf(i: number): string | undefined {
    const c = this.calls[i]?.credentials;
    return c?.kind === 'secret' ? c.clientSecret.reveal() : undefined;
  }
}

/** The one place that knows how a `TokenManager` is built. */
function makeManager() {
  const source = new ManualSource();
  const log = memoryLogger();
  const { metrics, route } = routeMetrics();
  let credentials = OLD;
  const manager = new TokenManager({
    config: TOKEN_CONFIG,
    source,
    credentials: () => credentials,
    clock: systemClock,
    logger: log.logger,
    metrics: route,
    random: () => 0.5,
  });
  /** What the credential watcher does on a change. */
  const rotate = (next: ClientCredentials) => {
    credentials = next;
    manager.credentialsChanged();
  };
  return { manager, source, log, metrics, rotate };
}

const flush = () => vi.advanceTimersByTimeAsync(0);

beforeEach(() => useFakeTime());
afterEach(() => {
  vi.useRealTimers();
});

describe('TokenManager: credentials rotate during a renewal', () => {
  it('lets the renewal in flight finish, then renews at once with the new credentials', async () => {
    const t = makeManager();
    t.manager.start();
    await flush();
    expect(t.source.calls).toHaveLength(1);
    t.rotate(NEW); // while the first request, made with the old secret, is in flight
    await flush();
    expect(t.source.calls).toHaveLength(1); // still one request in flight at a time
    t.source.issue(0, 'token-old-creds');
    await flush();
    expect(t.manager.current()?.reveal()).toBe('token-old-creds');
    expect(t.source.calls).toHaveLength(2);
    expect(t.source.secretOf(0)).toBe('old-secret-value');
    expect(t.source.secretOf(1)).toBe('new-secret-value');
    t.source.issue(1, 'token-new-creds');
    await flush();
    expect(t.manager.current()?.reveal()).toBe('token-new-creds');
    // No third request: the renewal is scheduled from the new token's lifetime.
    await vi.advanceTimersByTimeAsync(479_999);
    expect(t.source.calls).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(t.source.calls).toHaveLength(3);
  });

  it('renews with the new credentials at once after a renewal in flight fails, not after the backoff', async () => {
    const t = makeManager();
    t.manager.start();
    await flush();
    t.rotate(NEW);
    t.source.fail(0);
    await flush();
    expect(t.source.calls).toHaveLength(2);
    expect(t.source.secretOf(1)).toBe('new-secret-value');
    t.source.issue(1, 'token-new-creds');
    await flush();
    expect(t.manager.current()?.reveal()).toBe('token-new-creds');
    // The retry timer of the failed request was replaced: nothing else is sent before the
    // new token's scheduled renewal.
    await vi.advanceTimersByTimeAsync(60_000);
    expect(t.source.calls).toHaveLength(2);
  });

  it('serves the old token until the new credentials have brought a new one', async () => {
    const t = makeManager();
    t.manager.start();
    await flush();
    t.source.issue(0, 'token-1');
    await flush();
    t.rotate(NEW);
    await flush();
    expect(t.source.calls).toHaveLength(2);
    expect(t.manager.current()?.reveal()).toBe('token-1');
    t.source.issue(1, 'token-2');
    await flush();
    expect(t.manager.current()?.reveal()).toBe('token-2');
    expect(t.log.text()).not.toMatch(/old-secret-value|new-secret-value|token-1|token-2/);
  });
});

describe('TokenManager: stop()', () => {
  it('during a renewal: the late answer installs nothing, arms no timer, and nothing is requested after', async () => {
    const t = makeManager();
    t.manager.start();
    await flush();
    const waiting = t.manager.waitForToken(Date.now() + 10_000).catch((e: unknown) => e);
    t.manager.stop();
    expect(answerOf(await waiting).code).toBe('token_unavailable');
    t.source.issue(0, 'token-too-late');
    await flush();
    expect(t.manager.current()).toBeUndefined();
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(24 * 3600_000);
    expect(t.source.calls).toHaveLength(1);
  });

  it('during a renewal that then fails: no retry is scheduled', async () => {
    const t = makeManager();
    t.manager.start();
    await flush();
    t.manager.stop();
    t.source.fail(0);
    await flush();
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(24 * 3600_000);
    expect(t.source.calls).toHaveLength(1);
  });

  it('while a renewal and the expiry are scheduled: both timers go, no request follows', async () => {
    const t = makeManager();
    t.manager.start();
    await flush();
    t.source.issue(0, 'token-1');
    await flush();
    expect(vi.getTimerCount()).toBeGreaterThan(0); // the renewal and the expiry
    t.manager.stop();
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(24 * 3600_000);
    expect(t.source.calls).toHaveLength(1);
  });

  it('while a retry is scheduled after a failure: the retry timer goes', async () => {
    const t = makeManager();
    t.manager.start();
    await flush();
    t.source.fail(0);
    await flush();
    expect(vi.getTimerCount()).toBe(1); // the backoff
    t.manager.stop();
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(120_000);
    expect(t.source.calls).toHaveLength(1);
  });

  it('with a rotation queued behind the renewal in flight: the rotation requests nothing after stop', async () => {
    const t = makeManager();
    t.manager.start();
    await flush();
    t.rotate(NEW); // queued behind request 0
    t.manager.stop();
    t.source.issue(0, 'token-too-late');
    await flush();
    await vi.advanceTimersByTimeAsync(24 * 3600_000);
    expect(t.source.calls).toHaveLength(1);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('after stop, neither renew(), a 401 nor a rotation sends a token request', async () => {
    const t = makeManager();
    t.manager.start();
    await flush();
    t.source.issue(0, 'token-1');
    await flush();
    const token = t.manager.current() as Secret;
    t.manager.stop();
    await t.manager.renew();
    await t.manager.renewAfterRejection(token);
    t.rotate(NEW);
    await flush();
    expect(t.source.calls).toHaveLength(1);
    expect(vi.getTimerCount()).toBe(0);
  });
});
