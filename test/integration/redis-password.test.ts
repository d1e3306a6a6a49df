import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RedisServer, startRedis } from '../../fixtures/redis.js';
import { systemClock } from '../../src/clock.js';
import { readRedisPassword } from '../../src/credentials/credentials.js';
import { SharedBudgetMetrics } from '../../src/metrics/metrics.js';
import { LocalSlotStore } from '../../src/pacing/local-slot-store.js';
import { RedisSlotStore } from '../../src/pacing/redis-slot-store.js';
import { createSharedStore, type RateLimitConfig } from '../../src/pacing/shared-store.js';
import { logSink } from '../support/log-sink.js';

const password = `pw-${randomBytes(12).toString('hex')}`;
const wrong = `wrong-${randomBytes(12).toString('hex')}`;
let redis: RedisServer;
let dir: string;

beforeAll(async () => {
  redis = await startRedis({ password });
  dir = mkdtempSync(join(tmpdir(), 'm2m-redis-'));
});

afterAll(async () => {
  await redis?.stop();
});

const rateLimit: RateLimitConfig = {
  perSecond: 10,
  burst: 1,
  window: { max: 100, length: 60_000 },
  queue: { max: 10, timeout: 30_000 },
};

function build(secret: string) {
  const file = join(dir, `password-${randomUUID()}`);
  // As `echo secret > file` or a Kubernetes secret written with a trailing newline.
  writeFileSync(file, `${secret}\n`);
  const registry = new Registry();
  const sink = logSink('debug');
  const store = createSharedStore(
    rateLimit,
    { redis: redis.url, passwordFile: file, key: `pw:${randomUUID()}`, fallback: 0.25 },
    {
      clock: systemClock,
      logger: sink.logger,
      registry,
      localStoreFactory: (limits) => new LocalSlotStore({ ...limits, clock: systemClock }),
      password: readRedisPassword(file),
    },
  );
  return { store, sink, registry };
}

describe('Redis password from a file', () => {
  it('authenticates with the password file and uses the shared budget', async () => {
    const { store, sink } = build(password);
    try {
      expect((await store.reserve(1000, 0)).granted).toBe(true);
      expect(store.usingShared).toBe(true);
      expect(sink.events()).not.toContain('shared_budget_down');
    } finally {
      await store.close();
    }
  });

  it('never puts the password in logs, errors or a dump of the store', async () => {
    const { store, sink } = build(wrong);
    try {
      const r = await store.reserve(1000, 0);
      expect(r.granted).toBe(true); // through the fallback
      expect(store.usingShared).toBe(false);
      expect(sink.events()).toContain('shared_budget_down');
      const everything = [...sink.lines, JSON.stringify(store), inspect(store, { depth: 10 })].join(
        '\n',
      );
      expect(everything).toMatch(/WRONGPASS|NOAUTH|invalid|not connected/i);
      expect(everything).not.toContain(wrong);
      expect(everything).not.toContain(password);
    } finally {
      await store.close();
    }

    // The store's own errors, thrown to whoever calls it directly.
    const direct = new RedisSlotStore({
      url: redis.url,
      password: wrong,
      key: 'pw:direct',
      perSecond: 1,
      burst: 1,
      windowMax: 0,
      windowMs: 1000,
      metrics: new SharedBudgetMetrics(new Registry()),
    });
    try {
      const error = await direct.reserve(0, 0).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(Error);
      const text = `${String(error)} ${inspect(error)} ${JSON.stringify(direct)} ${inspect(direct)}`;
      expect(text).not.toContain(wrong);
    } finally {
      await direct.close();
    }
  });
});
