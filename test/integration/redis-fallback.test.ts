import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { Redis } from 'ioredis';
import { Registry } from 'prom-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type RedisServer, startRedis } from '../../fixtures/redis.js';
import { type Clock, systemClock } from '../../src/clock.js';
import type { FallbackSlotStore } from '../../src/pacing/fallback-slot-store.js';
import { SWITCH_HOLD_MS } from '../../src/pacing/fallback-slot-store.js';
import { LocalSlotStore } from '../../src/pacing/local-slot-store.js';
import { reserveKeys } from '../../src/pacing/reserve-script.js';
import { createSharedStore, type RateLimitConfig } from '../../src/pacing/shared-store.js';
import type { SlotLimits, SlotStore } from '../../src/pacing/types.js';
import { logSink } from '../support/log-sink.js';

let redis: RedisServer;
const open: FallbackSlotStore[] = [];

beforeAll(async () => {
  redis = await startRedis();
});

afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  await redis?.stop();
});

const rateLimit = (perSecond: number, windowMax = 1000): RateLimitConfig => ({
  perSecond,
  burst: 1,
  window: { max: windowMax, length: 60_000 },
  queue: { max: 1000, timeout: 30_000 },
});

async function metric(registry: Registry, name: string): Promise<number> {
  const m = registry.getSingleMetric(name);
  if (!m) throw new Error(`${name} not registered`);
  return (await m.get()).values[0]?.value ?? Number.NaN;
}

/** The fallback store a replica was given: its limits and the start of each grant (epoch ms). */
interface LocalRecord {
  limits: SlotLimits;
  starts: number[];
}

/** The real `LocalSlotStore`, recording the reserved start of every granted reservation. */
function recordingLocalStore(limits: SlotLimits, record: LocalRecord): SlotStore {
  // The clock reading the store computed its delay from, so `now + delayMs` is its reserved start.
  let now = 0;
  const clock: Clock = { ...systemClock, now: () => (now = systemClock.now()) };
  const store = new LocalSlotStore({ ...limits, clock });
  return {
    async reserve(maxDelayMs, notBeforeMs) {
      const reservation = store.reserveNow(maxDelayMs, notBeforeMs);
      if (reservation.granted) record.starts.push(now + reservation.delayMs);
      return reservation;
    },
    close: () => store.close(),
  };
}

function build(url: string, key: string, perSecond: number, fallback: number | undefined) {
  const registry = new Registry();
  const sink = logSink('info');
  const locals: LocalRecord[] = [];
  const store = createSharedStore(
    rateLimit(perSecond),
    fallback === undefined ? { redis: url, key } : { redis: url, key, fallback },
    {
      clock: systemClock,
      logger: sink.logger,
      registry,
      localStoreFactory: (limits) => {
        const record: LocalRecord = { limits, starts: [] };
        locals.push(record);
        return recordingLocalStore(limits, record);
      },
    },
  );
  open.push(store);
  return { store, registry, sink, locals };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(condition: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(20);
  }
}

describe('shared budget falls back to local pacing while Redis is down', () => {
  it('keeps granting through a Redis outage at fallback × the limits, logs each switch once, and returns to the shared budget', async () => {
    const key = `fallback:${randomUUID()}`;
    const { store, registry, sink, locals } = build(redis.url, key, 10, 0.5);
    // The local budget is made at the switch, at the share known then.
    expect(locals).toHaveLength(0);

    // A replica with an always-full queue, started times in local ms.
    const starts: { at: number; shared: boolean }[] = [];
    let failures = 0;
    let running = true;
    const loop = (async () => {
      while (running) {
        const r = await store.reserve(10_000, 0).catch(() => {
          failures++;
          return undefined;
        });
        if (!r?.granted) {
          failures++;
          continue;
        }
        await sleep(r.delayMs);
        starts.push({ at: performance.now(), shared: store.usingShared });
      }
    })();

    await sleep(1000);
    expect(await metric(registry, 'm2m_proxy_shared_budget_up')).toBe(1);
    expect(locals).toHaveLength(0);
    // Alone on the key: its share would be 1, capped by fallback 0.5.
    expect(await metric(registry, 'm2m_proxy_shared_budget_replicas')).toBe(1);
    expect(await metric(registry, 'm2m_proxy_shared_budget_fallback_share')).toBe(0.5);

    await redis.stop();
    const downAt = performance.now();
    try {
      await sleep(2500);
      expect(store.usingShared).toBe(false);
      expect(locals).toHaveLength(1);
      expect(locals[0]?.limits).toMatchObject({ perSecond: 5 * 0.99, burst: 1, windowMax: 500 });
      expect(await metric(registry, 'm2m_proxy_shared_budget_up')).toBe(0);
      expect(await metric(registry, 'm2m_proxy_shared_budget_errors_total')).toBeGreaterThan(0);
      // (A start reserved in Redis before the outage, ≤ 200 ms ahead, still goes at its time.)
      const during = starts.filter((s) => !s.shared && s.at > downAt + 250);
      // The first local start keeps a second from the fleet's schedule (no sliding second holds
      // starts of both), then 5/s alone: about 8 starts in the 1.5 s left ...
      expect(Math.min(...during.map((s) => s.at))).toBeGreaterThanOrEqual(downAt + 990);
      expect(during.length).toBeGreaterThanOrEqual(5);
      expect(during.length).toBeLessThanOrEqual(8);
      // ... reserved ≥ 200 ms apart (what the replica really did jitters with the timers).
      const reserved = locals[0]?.starts ?? [];
      const gaps = reserved.slice(1).map((t, i) => t - (reserved[i] ?? 0));
      expect(reserved.length).toBeGreaterThanOrEqual(5);
      expect(Math.min(...gaps)).toBeGreaterThanOrEqual(200);
    } finally {
      await redis.restart();
    }

    await until(() => store.usingShared, 3000);
    expect(await metric(registry, 'm2m_proxy_shared_budget_up')).toBe(1);
    await sleep(500);
    running = false;
    await loop;

    expect(failures).toBe(0);
    // The reservations after the restart went to the (new, empty) Redis.
    const check = new Redis(redis.url);
    try {
      expect(await check.zcard(reserveKeys(key)[1])).toBeGreaterThan(0);
    } finally {
      check.disconnect();
    }
    expect(sink.events().filter((e) => e === 'shared_budget_down')).toHaveLength(1);
    expect(sink.events().filter((e) => e === 'shared_budget_up')).toHaveLength(1);
    const down = sink.lines.map((l) => JSON.parse(l)).find((l) => l.event === 'shared_budget_down');
    expect(down).toMatchObject({ level: 40, key, share: 0.5, replicas: 1 });
  });

  it('without fallback, each of N replicas that lose Redis paces at 1/N of the limits, as many as it last saw on the key', async () => {
    const key = `fallback:share:${randomUUID()}`;
    const fleet = [0, 1, 2].map(() => build(redis.url, key, 9, undefined));
    // Each announces itself at once and learns the count at its next beat (2 s).
    await sleep(2300);
    for (const { registry } of fleet) {
      expect(await metric(registry, 'm2m_proxy_shared_budget_replicas')).toBe(3);
      expect(await metric(registry, 'm2m_proxy_shared_budget_fallback_share')).toBeCloseTo(1 / 3);
    }
    await redis.stop();
    try {
      for (const { store, sink } of fleet) {
        await until(() => sink.events().includes('shared_budget_down'), 2000);
        await store.reserve(10_000, 0);
      }
      for (const { locals, sink } of fleet) {
        expect(locals).toHaveLength(1);
        // Together exactly the budget: 3 × 3/s = 9/s (each less the 1 % margin).
        expect(locals[0]?.limits.perSecond).toBeCloseTo(3 * 0.99);
        expect(locals[0]?.limits.windowMax).toBe(333);
        const down = sink.lines
          .map((l) => JSON.parse(l))
          .find((l) => l.event === 'shared_budget_down');
        expect(down).toMatchObject({ replicas: 3 });
        expect(down.share).toBeCloseTo(1 / 3);
      }
    } finally {
      await redis.restart();
    }
  });

  it('a replica that starts while Redis is down uses fallback, or one tenth of the limits without it', async () => {
    const nothing = await startRedis();
    const url = nothing.url;
    await nothing.stop();
    const capped = build(url, `fallback:${randomUUID()}`, 10, 0.3);
    const unset = build(url, `fallback:${randomUUID()}`, 10, undefined);
    await Promise.all([capped.store.reserve(10_000, 0), unset.store.reserve(10_000, 0)]);
    expect(capped.locals[0]?.limits.perSecond).toBeCloseTo(3 * 0.99);
    expect(unset.locals[0]?.limits.perSecond).toBeCloseTo(1 * 0.99);
    expect(await metric(unset.registry, 'm2m_proxy_shared_budget_replicas')).toBe(0);
    expect(await metric(unset.registry, 'm2m_proxy_shared_budget_fallback_share')).toBe(0.1);
  });

  it('paces locally from the start when Redis is unreachable, and the gauge says so', async () => {
    const nothing = await startRedis();
    const url = nothing.url;
    await nothing.stop();
    const { store, registry, sink, locals } = build(url, `fallback:${randomUUID()}`, 10, 0.25);
    const began = performance.now();
    const r = await store.reserve(10_000, 0);
    expect(r).toMatchObject({ granted: true, delayMs: 0 });
    // A refused connection fails at once; far below any queue timeout even on a loaded CI host.
    expect(performance.now() - began).toBeLessThan(1000);
    expect(locals[0]?.starts).toHaveLength(1);
    await until(() => sink.events().includes('shared_budget_down'), 1000);
    expect(await metric(registry, 'm2m_proxy_shared_budget_up')).toBe(0);
    // Further reservations neither wait for Redis nor log again.
    for (let i = 0; i < 3; i++) await store.reserve(10_000, 0);
    expect(sink.events().filter((e) => e === 'shared_budget_down')).toHaveLength(1);
  });

  it('waits up to the connect timeout, not the command timeout, for the first connection', async () => {
    // A relay that holds each new connection for 600 ms before joining it to Redis: the slow
    // TCP + AUTH + ready check of a replica starting on a busy node.
    const sockets = new Set<Socket>();
    const relay = createServer((client) => {
      client.pause();
      sockets.add(client);
      setTimeout(() => {
        const server = connect(redis.port, '127.0.0.1');
        sockets.add(server);
        client.pipe(server).pipe(client);
        client.resume();
      }, 600);
    });
    relay.listen(0, '127.0.0.1');
    await once(relay, 'listening');
    const { port } = relay.address() as AddressInfo;
    try {
      const { store, registry } = build(
        `redis://127.0.0.1:${port}`,
        `fallback:${randomUUID()}`,
        10,
        0.25,
      );
      const began = performance.now();
      const r = await store.reserve(10_000, 0);
      expect(r.granted).toBe(true);
      expect(performance.now() - began).toBeGreaterThanOrEqual(500);
      expect(store.usingShared).toBe(true);
      expect(await metric(registry, 'm2m_proxy_shared_budget_errors_total')).toBe(0);
    } finally {
      for (const socket of sockets) socket.destroy();
      relay.close();
    }
  });

  it('a replica whose Redis answers again within the hold (a stall it only believed an outage) goes back to the fleet without one start alone', async () => {
    const key = `fallback:brief:${randomUUID()}`;
    const { store, sink, locals } = build(redis.url, key, 10, 0.25);
    await until(() => store.usingShared, 1000);
    expect((await store.reserve(10_000, 0)).granted).toBe(true);
    const admin = new Redis(redis.url);
    try {
      // 400 ms without answers: the reservation times out (250 ms) and the replica switches; the
      // first probe, 200 ms later, finds Redis answering again.
      await admin.call('CLIENT', 'PAUSE', '400', 'ALL');
      const began = performance.now();
      const r = await store.reserve(10_000, 0);
      const took = performance.now() - began;
      expect(r.granted).toBe(true);
      expect(sink.events()).toContain('shared_budget_down');
      expect(sink.events()).toContain('shared_budget_up');
      // Granted by the fleet's budget once the probe answered, before the 1 s hold was over ...
      expect(store.usingShared).toBe(true);
      expect(took).toBeLessThan(250 + SWITCH_HOLD_MS);
      // ... and nothing was ever granted alone.
      expect(locals.flatMap((l) => l.starts)).toEqual([]);
    } finally {
      admin.disconnect();
    }
  });

  it('falls back within the command timeout when Redis stops answering without closing', async () => {
    const key = `fallback:${randomUUID()}`;
    const { store, registry, locals } = build(redis.url, key, 10, 0.25);
    await until(() => store.usingShared, 1000);
    expect((await store.reserve(10_000, 0)).granted).toBe(true);
    const admin = new Redis(redis.url);
    try {
      // Redis holds every client's commands for 3 s: a hung server, as a black hole would be.
      await admin.call('CLIENT', 'PAUSE', '3000', 'ALL');
      const began = performance.now();
      const r = await store.reserve(10_000, 0);
      const startsAfter = performance.now() - began + r.delayMs;
      expect(r.granted).toBe(true);
      // The 250 ms command timeout, not the end of the pause, released it: it starts locally
      // once the 1 s hold after the switch has passed (the grant is made then, not before).
      expect(startsAfter).toBeGreaterThanOrEqual(240 + SWITCH_HOLD_MS);
      expect(startsAfter).toBeLessThan(2500);
      expect(locals[0]?.starts).toHaveLength(1);
      expect(store.usingShared).toBe(false);
      expect(await metric(registry, 'm2m_proxy_shared_budget_errors_total')).toBeGreaterThan(0);
      await until(() => store.usingShared, 5000);
    } finally {
      admin.disconnect();
    }
  });
});
