import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { type RedisServer, startRedis } from '../../fixtures/redis.js';
import {
  EXPIRY_MARGIN_MS,
  parseReserveReply,
  RESERVE_LUA,
  type ReserveReply,
  reserveArgs,
  reserveKeys,
} from '../../src/pacing/reserve-script.js';
import type { SlotLimits } from '../../src/pacing/types.js';

// The reservation script run directly against a real redis-server: every expectation is exact
// in Redis time (µs), because the script reports the TIME it used.

let redis: RedisServer;
let client: Redis;

beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url);
});

afterAll(async () => {
  client?.disconnect();
  await redis?.stop();
});

afterEach(() => {
  vi.useRealTimers();
});

const newKey = () => `test:${randomUUID()}`;

async function reserve(
  key: string,
  limits: SlotLimits,
  maxDelayMs = 60_000,
  notBeforeMs = 0,
  lookaheadMs?: number,
): Promise<ReserveReply> {
  const raw = await client.eval(
    RESERVE_LUA,
    2,
    ...reserveKeys(key),
    ...reserveArgs(limits, maxDelayMs, notBeforeMs, lookaheadMs),
  );
  const reply = parseReserveReply(raw);
  // The delay is always measured from the TIME the script read.
  expect(reply.delayUs).toBe(reply.startUs - reply.nowUs);
  return reply;
}

async function snapshot(key: string) {
  const [state, starts] = reserveKeys(key);
  return {
    state: await client.hgetall(state),
    starts: await client.zrange(starts, 0, -1, 'WITHSCORES'),
  };
}

describe('reservation script (real Redis)', () => {
  it('lets window.max start at once, then delays the next exactly until the oldest leaves the window', async () => {
    const key = newKey();
    const limits = { perSecond: 0, burst: 1, windowMax: 3, windowMs: 1000 };
    const first = await reserve(key, limits);
    const second = await reserve(key, limits);
    const third = await reserve(key, limits);
    for (const r of [first, second, third]) {
      expect(r.granted).toBe(true);
      expect(r.delayUs).toBe(0);
    }
    expect([first, second, third].map((r) => r.windowRemaining)).toEqual([2, 1, 0]);

    // One microsecond short of the boundary is refused and says exactly when it would fit.
    const refused = await reserve(key, limits, 0);
    expect(refused.granted).toBe(false);
    expect(refused.startUs).toBe(first.startUs + 1_000_000);

    const fourth = await reserve(key, limits);
    expect(fourth.granted).toBe(true);
    expect(fourth.startUs).toBe(first.startUs + 1_000_000);
    const fifth = await reserve(key, limits);
    expect(fifth.startUs).toBe(second.startUs + 1_000_000);
    expect(fifth.windowRemaining).toBe(0);
  });

  it('lets a burst start at once after idle time, then spaces starts 1/perSecond apart', async () => {
    const key = newKey();
    const limits = { perSecond: 10, burst: 3, windowMax: 0, windowMs: 1000 };
    const burst = [
      await reserve(key, limits),
      await reserve(key, limits),
      await reserve(key, limits),
    ];
    for (const r of burst) expect(r.delayUs).toBe(0);
    const t1 = burst[0]?.startUs ?? 0;
    const fourth = await reserve(key, limits);
    const fifth = await reserve(key, limits);
    expect(fourth.startUs).toBe(t1 + 100_000);
    expect(fifth.startUs).toBe(t1 + 200_000);
    expect(fourth.windowRemaining).toBeUndefined();

    // Idle until the bucket is full again (theoretical arrival time t1 + 500 ms has passed).
    const now = (await reserve(newKey(), limits)).nowUs;
    await new Promise((r) => setTimeout(r, (t1 + 500_000 - now) / 1000 + 20));
    const again = [
      await reserve(key, limits),
      await reserve(key, limits),
      await reserve(key, limits),
    ];
    for (const r of again) expect(r.delayUs).toBe(0);
    const next = await reserve(key, limits);
    expect(next.startUs).toBe((again[0]?.startUs ?? 0) + 100_000);
  });

  it('spaces a fractional rate by at least 1/perSecond without drifting', async () => {
    const key = newKey();
    const limits = { perSecond: 6, burst: 1, windowMax: 0, windowMs: 1000 };
    const starts: number[] = [];
    for (let i = 0; i < 13; i++) starts.push((await reserve(key, limits)).startUs);
    const first = starts[0] ?? 0;
    starts.forEach((s, i) => {
      // Rounding is up, once per reservation: at most 1 µs late per start, never early.
      expect(s - first).toBeGreaterThanOrEqual((i * 1_000_000) / 6);
      expect(s - first).toBeLessThanOrEqual((i * 1_000_000) / 6 + i);
    });
  });

  it('refuses a start beyond maxDelay, says when it would fit, and records nothing', async () => {
    const windowKey = newKey();
    const windowLimits = { perSecond: 0, burst: 1, windowMax: 1, windowMs: 10_000 };
    const first = await reserve(windowKey, windowLimits);
    const before = await snapshot(windowKey);
    const refused = await reserve(windowKey, windowLimits, 1000);
    expect(refused.granted).toBe(false);
    expect(refused.startUs).toBe(first.startUs + 10_000_000);
    expect(refused.delayUs).toBeGreaterThan(9_000_000);
    expect(await snapshot(windowKey)).toEqual(before);

    const bucketKey = newKey();
    const bucketLimits = { perSecond: 1, burst: 1, windowMax: 0, windowMs: 1000 };
    const one = await reserve(bucketKey, bucketLimits);
    const bucketBefore = await snapshot(bucketKey);
    const no = await reserve(bucketKey, bucketLimits, 500);
    expect(no.granted).toBe(false);
    expect(no.startUs).toBe(one.startUs + 1_000_000);
    expect(await snapshot(bucketKey)).toEqual(bucketBefore);
  });

  it('starts no earlier than notBefore, and keeps later reservations after it', async () => {
    const key = newKey();
    const limits = { perSecond: 10, burst: 5, windowMax: 100, windowMs: 10_000 };
    const paused = await reserve(key, limits, 60_000, 500);
    expect(paused.granted).toBe(true);
    expect(paused.delayUs).toBe(500_000);
    const next = await reserve(key, limits);
    // Starts are kept in order, so the window check stays exact: same start, unique member.
    expect(next.startUs).toBe(paused.startUs);
    expect(await client.zcard(reserveKeys(key)[1])).toBe(2);
    const refused = await reserve(key, limits, 100, 0);
    expect(refused.granted).toBe(false);
  });

  it('uses Redis TIME, not the client clock', async () => {
    // A client clock one hour fast must change nothing: the script takes no client time.
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 3_600_000);
    const [beforeS, beforeUs] = await client.time();
    const r = await reserve(newKey(), { perSecond: 5, burst: 1, windowMax: 10, windowMs: 1000 });
    const [afterS, afterUs] = await client.time();
    const before = Number(beforeS) * 1e6 + Number(beforeUs);
    const after = Number(afterS) * 1e6 + Number(afterUs);
    expect(r.nowUs).toBeGreaterThanOrEqual(before);
    expect(r.nowUs).toBeLessThanOrEqual(after);
    expect(r.delayUs).toBe(0);
    expect(Math.abs(r.nowUs / 1000 - Date.now())).toBeGreaterThan(3_000_000);
  });

  it('sets an idle expiry on its keys: the longer of the window and the bucket refill, plus a margin', async () => {
    const key = newKey();
    const [state, starts] = reserveKeys(key);
    // Window 3 s; bucket refill 8 × 500 ms = 4 s: the bucket decides.
    await reserve(key, { perSecond: 2, burst: 8, windowMax: 5, windowMs: 3000 });
    for (const k of [state, starts]) {
      const ttl = await client.pttl(k);
      expect(ttl).toBeGreaterThan(4000 + EXPIRY_MARGIN_MS - 200);
      expect(ttl).toBeLessThanOrEqual(4000 + EXPIRY_MARGIN_MS + 1);
    }
    // A reservation in the future keeps its keys alive that much longer.
    await reserve(key, { perSecond: 2, burst: 8, windowMax: 5, windowMs: 3000 }, 60_000, 5000);
    expect(await client.pttl(state)).toBeGreaterThan(9000 + EXPIRY_MARGIN_MS - 200);

    const bucketOnly = newKey();
    await reserve(bucketOnly, { perSecond: 2, burst: 1, windowMax: 0, windowMs: 3000 });
    expect(await client.exists(reserveKeys(bucketOnly)[1])).toBe(0);
    // The window is off, so its length does not count: the refill time (1 × 500 ms) decides.
    expect(await client.pttl(reserveKeys(bucketOnly)[0])).toBeLessThanOrEqual(
      500 + EXPIRY_MARGIN_MS + 1,
    );
  });

  it('grants at once and writes nothing when both limits are off', async () => {
    const key = newKey();
    const off = { perSecond: 0, burst: 1, windowMax: 0, windowMs: 1000 };
    for (let i = 0; i < 5; i++) {
      const r = await reserve(key, off, 0);
      expect(r.granted).toBe(true);
      expect(r.delayUs).toBe(0);
    }
    expect(await client.exists(...reserveKeys(key))).toBe(0);
  });

  it('with a lookahead, grants only a start that is due within it; a later one is answered "later" and records nothing', async () => {
    const key = newKey();
    const limits = { perSecond: 5, burst: 1, windowMax: 10, windowMs: 10_000 };
    // Idle budget: due now, granted on the first ask.
    const first = await reserve(key, limits, 60_000, 0, 50);
    expect(first).toMatchObject({ granted: true, later: false, delayUs: 0, windowRemaining: 9 });
    const before = await snapshot(key);

    // The next slot is 200 ms away, beyond 50 ms: not granted, not refused, nothing written.
    const early = await reserve(key, limits, 60_000, 0, 50);
    expect(early).toMatchObject({ granted: false, later: true, windowRemaining: 9 });
    expect(early.startUs).toBe(first.startUs + 200_000);
    expect(await snapshot(key)).toEqual(before);
    // Asked again and again, the answer names the same start: nobody took it.
    const again = await reserve(key, limits, 60_000, 0, 50);
    expect(again.later).toBe(true);
    expect(again.startUs).toBe(early.startUs);

    // Asked within the last 50 ms before it, the same slot is granted and recorded.
    await new Promise((r) => setTimeout(r, (early.startUs - again.nowUs) / 1000 - 40));
    const due = await reserve(key, limits, 60_000, 0, 50);
    expect(due.granted).toBe(true);
    expect(due.later).toBe(false);
    // The slot itself (or now, had this timer fired after it on a busy host).
    expect(due.startUs).toBe(Math.max(early.startUs, due.nowUs));
    expect(due.delayUs).toBeLessThanOrEqual(50_000);
    expect(due.windowRemaining).toBe(8);
    expect((await snapshot(key)).starts).toHaveLength(4); // two members, two scores
  });

  it('with a lookahead, still refuses at once a start beyond maxDelay, and a probe stays a probe', async () => {
    const key = newKey();
    const limits = { perSecond: 1, burst: 1, windowMax: 0, windowMs: 1000 };
    await reserve(key, limits, 60_000, 0, 50);
    const before = await snapshot(key);
    const refused = await reserve(key, limits, 500, 0, 50);
    expect(refused).toMatchObject({ granted: false, later: false });
    expect(refused.delayUs).toBeGreaterThan(500_000);
    const probe = await reserve(key, limits, -1, 0, 50);
    expect(probe).toMatchObject({ granted: false, later: false });
    expect(await snapshot(key)).toEqual(before);
  });

  it('with a lookahead, grants ahead a start decided by notBefore (a pause holds the fleet back), not one decided by the budget', async () => {
    const key = newKey();
    const limits = { perSecond: 2, burst: 1, windowMax: 0, windowMs: 1000 };
    // The pause decides: recorded 800 ms ahead, and the next start comes after it.
    const paused = await reserve(key, limits, 60_000, 800, 50);
    expect(paused).toMatchObject({ granted: true, later: false, delayUs: 800_000 });
    const behind = await reserve(key, limits, 60_000, 0, 50);
    expect(behind.later).toBe(true);
    expect(behind.startUs).toBe(paused.startUs + 500_000);
    // A pause shorter than the budget's own wait does not decide: "later", nothing recorded.
    const before = await snapshot(key);
    const short = await reserve(key, limits, 60_000, 100, 50);
    expect(short.later).toBe(true);
    expect(short.startUs).toBe(behind.startUs);
    expect(await snapshot(key)).toEqual(before);
  });

  it('puts a forfeited grant back while it is still the latest, and never once another was granted after it', async () => {
    const key = newKey();
    const limits = { perSecond: 5, burst: 1, windowMax: 10, windowMs: 10_000 };
    const call = (reclaim?: string) =>
      client
        .eval(RESERVE_LUA, 2, ...reserveKeys(key), ...reserveArgs(limits, 60_000, 0, 50, reclaim))
        .then(parseReserveReply);
    const first = await call();
    const before = await snapshot(key);
    const forfeited = await call();
    expect(forfeited.later).toBe(true);
    // Granted ahead (no lookahead), then given back unused: the record is as before it.
    const raw = await client.eval(
      RESERVE_LUA,
      2,
      ...reserveKeys(key),
      ...reserveArgs(limits, 60_000, 0),
    );
    const taken = parseReserveReply(raw);
    expect(taken.granted).toBe(true);
    expect(taken.name).toBe(`${first.startUs + 200_000}-2`);
    const back = await call(taken.name);
    expect(back.reclaimed).toBe(true);
    expect(back.later).toBe(true);
    // The same slot is free again, and nothing of the forfeited grant is left in the window.
    expect(back.startUs).toBe(taken.startUs);
    const after = await snapshot(key);
    expect(after.starts).toEqual(before.starts);
    expect(after.state.tat).toBe(before.state.tat);

    // Once another grant follows it, a forfeited grant stays recorded (the safe side).
    const a = parseReserveReply(
      await client.eval(RESERVE_LUA, 2, ...reserveKeys(key), ...reserveArgs(limits, 60_000, 0)),
    );
    const b = parseReserveReply(
      await client.eval(RESERVE_LUA, 2, ...reserveKeys(key), ...reserveArgs(limits, 60_000, 0)),
    );
    expect(b.startUs).toBe(a.startUs + 200_000);
    const late = await call(a.name);
    expect(late.reclaimed).toBe(false);
    expect(late.startUs).toBe(b.startUs + 200_000);
    expect(await client.zcard(reserveKeys(key)[1])).toBe(3);
  });

  it('keeps the sorted set bounded by window.max', async () => {
    const key = newKey();
    const limits = { perSecond: 0, burst: 1, windowMax: 4, windowMs: 100 };
    for (let i = 0; i < 12; i++) await reserve(key, limits);
    expect(await client.zcard(reserveKeys(key)[1])).toBeLessThanOrEqual(5);
  });
});
