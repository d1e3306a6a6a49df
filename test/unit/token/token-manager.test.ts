import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import type { RouteConfig } from '../../../src/config/config.js';
import type { ClientCredentials } from '../../../src/credentials/credentials.js';
import { Secret } from '../../../src/credentials/secret.js';
import { createLogger } from '../../../src/log/logger.js';
import { Metrics } from '../../../src/metrics/metrics.js';
import {
  type IssuedToken,
  TokenRequestError,
  type TokenSource,
} from '../../../src/token/client.js';
import { TokenUnavailableError } from '../../../src/token/errors.js';
import { backoffDelay, renewalDelay, TokenManager } from '../../../src/token/manager.js';
import { TOKEN_CONFIG } from '../fakes.js';

const CREDS: ClientCredentials = { kind: 'secret', clientId: 'id', clientSecret: new Secret('s') };

/** A token endpoint in fake time: each call answers after `latency` with the next scripted outcome. */
class FakeSource implements TokenSource {
  calls: { at: number; credentials: ClientCredentials }[] = [];
  outcomes: (IssuedToken | Error)[] = [];
  latency = 0;
  lifetimeMs: number | undefined = 60_000;
  async requestToken(credentials: ClientCredentials): Promise<IssuedToken> {
    this.calls.push({ at: Date.now(), credentials });
    const n = this.calls.length;
    if (this.latency) await new Promise((r) => setTimeout(r, this.latency));
    const outcome = this.outcomes.shift() ?? {
      accessToken: new Secret(`token-${n}`),
      lifetimeMs: this.lifetimeMs,
    };
    if (outcome instanceof Error) throw outcome;
    return outcome;
  }
}

function setup(config: Partial<RouteConfig['token']> = {}, random = () => 0.5) {
  const source = new FakeSource();
  const metrics = new Metrics(new Registry(), { defaultMetrics: false });
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger('debug', { write: (s: string) => lines.push(JSON.parse(s)) });
  let credentials = CREDS;
  const manager = new TokenManager({
    config: { ...TOKEN_CONFIG, ...config },
    source,
    credentials: () => credentials,
    clock: systemClock,
    logger,
    metrics: metrics.forRoutes(['default']),
    random,
  });
  return {
    source,
    metrics,
    lines,
    manager,
    setCredentials: (c: ClientCredentials) => {
      credentials = c;
    },
  };
}

const failure = (reason = 'http_503') =>
  new TokenRequestError(reason, `token endpoint answered ${reason}`);

describe('TokenManager', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 1_000_000 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('renews at refreshAt × lifetime when that comes first', async () => {
    // 600 s lifetime: 0.8 × 600 = 480 s < 600 − 30 = 570 s.
    const { source, manager } = setup();
    source.lifetimeMs = 600_000;
    manager.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(source.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(479_999);
    expect(source.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(source.calls).toHaveLength(2);
  });

  it('renews minRemaining before expiry when that comes first', async () => {
    // 100 s lifetime: 100 − 30 = 70 s < 0.8 × 100 = 80 s.
    const { source, manager } = setup();
    source.lifetimeMs = 100_000;
    manager.start();
    await vi.advanceTimersByTimeAsync(69_999);
    expect(source.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(source.calls).toHaveLength(2);
    expect(renewalDelay(100_000, 0.8, 30_000)).toBe(70_000);
    expect(renewalDelay(600_000, 0.8, 30_000)).toBe(480_000);
    // A token living shorter than minRemaining is renewed at refreshAt × lifetime, not in a loop.
    expect(renewalDelay(20_000, 0.8, 30_000)).toBe(16_000);
  });

  it('counts the lifetime from when the request was sent', async () => {
    const { source, manager } = setup();
    source.latency = 5000;
    source.lifetimeMs = 100_000;
    manager.start();
    await vi.advanceTimersByTimeAsync(5000);
    expect(manager.expiresAt).toBe(1_000_000 + 100_000);
    await vi.advanceTimersByTimeAsync(64_999); // sent at 0, renew at 70 s
    expect(source.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(source.calls).toHaveLength(2);
  });

  it('renews before expiry and keeps the old token while the IdP is down, then 503 after expiry', async () => {
    const { source, manager, metrics } = setup({ retry: { min: 1000, max: 4000 } });
    source.lifetimeMs = 100_000;
    manager.start();
    await vi.advanceTimersByTimeAsync(0);
    const first = manager.current();
    expect(first?.reveal()).toBe('token-1');
    source.outcomes = Array.from({ length: 100 }, () => failure());
    await vi.advanceTimersByTimeAsync(70_000); // the renewal fails ...
    expect(source.calls.length).toBeGreaterThanOrEqual(2);
    expect(manager.current()).toBe(first); // ... and the old token is still served
    await vi.advanceTimersByTimeAsync(29_999);
    expect(manager.current()).toBe(first);
    await vi.advanceTimersByTimeAsync(1); // expiry
    expect(manager.current()).toBeUndefined();
    expect(await metrics.tokenExpiry.get()).toMatchObject({ values: [{ value: 0 }] });
    const waiting = manager.waitForToken(Date.now() + 5000);
    const settled = expect(waiting).rejects.toEqual(new TokenUnavailableError());
    await vi.advanceTimersByTimeAsync(5000);
    await settled;
    // Recovery without restart: the next retry succeeds.
    source.outcomes = [];
    await vi.advanceTimersByTimeAsync(4000);
    expect(manager.current()?.reveal()).toMatch(/^token-/);
    const failures = await metrics.tokenRefreshFailures.get();
    expect(failures.values[0]).toMatchObject({ labels: { reason: 'http_503' } });
  });

  it('retries with exponential backoff and full jitter between retry.min and retry.max', async () => {
    const random = vi.fn(() => 0.75);
    const { source, manager } = setup({ retry: { min: 1000, max: 8000 } }, random);
    source.outcomes = Array.from({ length: 10 }, () => failure());
    manager.start();
    await vi.advanceTimersByTimeAsync(60_000);
    const gaps = source.calls.slice(1).map((c, i) => c.at - (source.calls[i]?.at ?? 0));
    // The ceiling doubles (2 s, 4 s, 8 s, then retry.max): min + 0.75 × (ceiling − min).
    expect(gaps.slice(0, 5)).toEqual([1750, 3250, 6250, 6250, 6250]);
    for (let attempt = 1; attempt < 40; attempt++) {
      expect(backoffDelay(attempt, 1000, 8000, () => 0)).toBe(1000);
      const top = backoffDelay(attempt, 1000, 8000, () => 0.999_999);
      expect(top).toBeLessThanOrEqual(8000);
      expect(top).toBeGreaterThan(Math.min(8000, 1000 * 2 ** attempt) - 1);
    }
  });

  it('never makes more than one token request for 1000 concurrent callers', async () => {
    const { source, manager } = setup();
    source.latency = 200;
    manager.start();
    const waiters = Array.from({ length: 1000 }, () => manager.waitForToken(Date.now() + 10_000));
    const renewals = Array.from({ length: 1000 }, () => manager.renew());
    await vi.advanceTimersByTimeAsync(200);
    await Promise.all([...waiters, ...renewals]);
    expect(source.calls).toHaveLength(1);
  });

  it('waiters leave at their own deadline or when their client aborts; the rest get the token', async () => {
    const { source, manager } = setup();
    source.outcomes = [failure()]; // the first token comes with the retry, after 1 s
    manager.start();
    const now = Date.now();
    const outcome = (p: Promise<void>) =>
      p.then(
        () => `ok@${Date.now() - now}`,
        (e: unknown) =>
          `${e instanceof TokenUnavailableError ? e.code : (e as Error).message}@${Date.now() - now}`,
      );
    const client = new AbortController();
    const all = [
      outcome(manager.waitForToken(now + 5000)),
      outcome(manager.waitForToken(now + 300)),
      outcome(manager.waitForToken(now + 5000, client.signal)),
      outcome(manager.waitForToken(now + 200)),
    ];
    await vi.advanceTimersByTimeAsync(100);
    client.abort(new Error('gone'));
    await vi.advanceTimersByTimeAsync(2000);
    expect(await Promise.all(all)).toEqual([
      expect.stringMatching(/^ok@1\d\d\d$/),
      'token_unavailable@300',
      'gone@100',
      'token_unavailable@200',
    ]);
    expect(vi.getTimerCount()).toBe(2); // the renewal and the expiry: no waiter timer is left
  });

  it('renews once however many requests saw the same 401', async () => {
    const { source, manager } = setup();
    source.latency = 100;
    manager.start();
    await vi.advanceTimersByTimeAsync(100);
    const rejected = manager.current();
    if (!rejected) throw new Error('no token');
    const all = Array.from({ length: 50 }, () => manager.renewAfterRejection(rejected));
    await vi.advanceTimersByTimeAsync(100);
    await Promise.all(all);
    // Late arrivals with the old token find a newer one and do not renew again.
    await manager.renewAfterRejection(rejected);
    expect(source.calls).toHaveLength(2);
    expect(manager.current()?.reveal()).toBe('token-2');
  });

  it('backs off renewals caused by 401s when fresh tokens keep being rejected', async () => {
    const { source, manager } = setup({ retry: { min: 1000, max: 4000 } });
    manager.start();
    await vi.advanceTimersByTimeAsync(0);
    const rejectCurrent = async () => {
      const token = manager.current();
      if (!token) throw new Error('no token');
      const worth = manager.shouldRenewAfterRejection(token);
      await manager.renewAfterRejection(token);
      return worth;
    };
    expect(await rejectCurrent()).toBe(true); // first 401: renew at once
    expect(source.calls).toHaveLength(2);
    expect(await rejectCurrent()).toBe(false); // the new token too: wait retry.min
    await vi.advanceTimersByTimeAsync(1000);
    expect(await rejectCurrent()).toBe(true);
    expect(source.calls).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(1999);
    expect(await rejectCurrent()).toBe(false); // then 2 s
    await vi.advanceTimersByTimeAsync(1);
    expect(await rejectCurrent()).toBe(true);
    expect(source.calls).toHaveLength(4);
    // A scheduled renewal resets the backoff.
    await vi.advanceTimersByTimeAsync(30_000);
    expect(source.calls).toHaveLength(5);
    expect(await rejectCurrent()).toBe(true);
  });

  it('renews at once when a token the upstream had accepted is refused, whatever the 401s before', async () => {
    const { source, manager } = setup({ retry: { min: 1000, max: 4000 } });
    manager.start();
    await vi.advanceTimersByTimeAsync(0);
    const first = manager.current();
    if (!first) throw new Error('no token');
    await manager.renewAfterRejection(first); // a 401 to a token never accepted: renewed
    expect(source.calls).toHaveLength(2);
    const second = manager.current();
    if (!second) throw new Error('no token');
    manager.accepted(second); // the upstream answered 200 to it ...
    await vi.advanceTimersByTimeAsync(10); // ... and revoked it well within retry.min
    expect(manager.shouldRenewAfterRejection(second)).toBe(true);
    await manager.renewAfterRejection(second);
    expect(source.calls).toHaveLength(3);
    // The third token is refused before it was ever accepted: that one backs off from retry.min.
    const third = manager.current();
    if (!third) throw new Error('no token');
    expect(manager.shouldRenewAfterRejection(third)).toBe(false);
    await manager.renewAfterRejection(third);
    expect(source.calls).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(1000);
    expect(manager.shouldRenewAfterRejection(third)).toBe(true);
  });

  it('starts the renewal backoff afresh when the credentials change', async () => {
    // random() = 1: every wait is the ceiling, min × 2^n.
    const { source, manager } = setup({ retry: { min: 1000, max: 60_000 } }, () => 1);
    source.outcomes = Array.from({ length: 5 }, () => failure());
    manager.start();
    // Failures wait 2, 4, 8, 16 s: the fifth request goes out at 30 s.
    await vi.advanceTimersByTimeAsync(30_000);
    expect(source.calls).toHaveLength(5);
    source.outcomes = [failure()];
    manager.credentialsChanged();
    await vi.advanceTimersByTimeAsync(0);
    expect(source.calls).toHaveLength(6); // at once, with the new credentials ...
    // ... and its failure is the first of a new series: 2 s, not 64 s.
    await vi.advanceTimersByTimeAsync(2000);
    expect(source.calls).toHaveLength(7);
  });

  it('renews at once with new credentials when they change', async () => {
    const { source, manager, setCredentials } = setup();
    manager.start();
    await vi.advanceTimersByTimeAsync(0);
    const next: ClientCredentials = {
      kind: 'secret',
      clientId: 'id',
      clientSecret: new Secret('rotated'),
    };
    setCredentials(next);
    manager.credentialsChanged();
    await vi.advanceTimersByTimeAsync(0);
    expect(source.calls).toHaveLength(2);
    expect(source.calls[1]?.credentials).toBe(next);
  });

  it('assumes the default lifetime when the response tells none', async () => {
    const { source, manager, lines } = setup();
    source.lifetimeMs = undefined;
    manager.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(manager.expiresAt).toBe(1_000_000 + 300_000);
    expect(lines.find((l) => l.event === 'token_renewed')).toMatchObject({
      lifetimeFrom: 'default',
    });
  });

  it('logs failures with the OAuth error and never the token', async () => {
    const { source, manager, lines } = setup();
    source.outcomes = [
      new TokenRequestError('invalid_client', 'token endpoint answered 401 invalid_client', {
        status: 401,
        error: 'invalid_client',
        description: 'client authentication failed',
      }),
    ];
    manager.start();
    await vi.advanceTimersByTimeAsync(2000);
    const failed = lines.find((l) => l.event === 'token_renewal_failed');
    expect(failed).toMatchObject({
      reason: 'invalid_client',
      status: 401,
      error: 'invalid_client',
      error_description: 'client authentication failed',
      endpoint: TOKEN_CONFIG.url,
    });
    expect(JSON.stringify(lines)).not.toMatch(/token-\d/);
  });
});
