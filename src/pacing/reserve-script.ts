import type { SlotLimits } from './types.js';

/**
 * The atomic reservation of the shared (fleet) budget: one Lua script, one round trip per
 * reservation, Redis server time. docs/fleet.md, "The reservation script", explains the
 * algorithm and why it is exact.
 *
 * Units inside the script are integer microseconds since the epoch (Redis `TIME`), so that a
 * fractional rate such as 6/s (166 666.67 µs apart) loses nothing that matters and every number
 * stays an exact double (< 2^53 µs ≈ year 2255).
 */

/**
 * KEYS[1]: hash `{key}:state` — `tat` (GCRA theoretical arrival time, µs) and `seq` (a counter
 *          that makes sorted-set members unique).
 * KEYS[2]: sorted set `{key}:starts` — reserved start times (score = start µs), trimmed to the
 *          window and to its newest `max` entries.
 * ARGV: intervalUs (1e6 / perSecond; 0 = bucket off), burst, windowMax (0 = off), windowUs,
 *       maxDelayUs, notBeforeUs, margin of the idle expiry in ms, lookaheadUs (-1 = none),
 *       reclaim: the name (`start-seq`) of a grant the caller forfeited without using it, or ''.
 * Returns {status, delayUs, windowRemaining (-1 = window off), startUs, nowUs, seq (the grant's
 * number, 0 when nothing was recorded), reclaimed 1|0}, where status is
 * 1 = granted (recorded), 0 = refused (the start is beyond maxDelay; nothing recorded),
 * 2 = later: the start is within maxDelay but more than lookaheadUs away, so nothing is recorded
 * and the caller asks again shortly before it (docs/fleet.md, "Rule 2: reserve only when nearly ready").
 * A start decided by notBefore (an upstream pause, a switch-over hold) is granted ahead as before:
 * recorded, it holds the rest of the fleet back, which is the point of an upstream pause.
 *
 * Reservations are kept in non-decreasing start order (a new start is never before the newest
 * reserved one). That makes the sliding-window check "fewer than max starts after start − length"
 * exact, and GCRA is exact for starts processed in order.
 */
export const RESERVE_LUA = `
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wmax = tonumber(ARGV[3])
local wlen = tonumber(ARGV[4])
local maxDelay = tonumber(ARGV[5])
local notBefore = tonumber(ARGV[6])
local marginMs = tonumber(ARGV[7])
local lookahead = tonumber(ARGV[8] or '-1')
local reclaim = ARGV[9] or ''

local function fmt(x) return string.format('%.0f', x) end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- A slot its replica reached too late and did not use (forfeited): while it is still the latest
-- grant, nothing was planned after it, so the record is put back as it was before that grant.
local reclaimed = 0
if reclaim ~= '' and redis.call('HGET', KEYS[1], 'last') == reclaim then
  local prev = redis.call('HGET', KEYS[1], 'prev')
  if prev and prev ~= '' then
    redis.call('HSET', KEYS[1], 'tat', prev)
  else
    redis.call('HDEL', KEYS[1], 'tat')
  end
  redis.call('ZREM', KEYS[2], reclaim)
  redis.call('HDEL', KEYS[1], 'last', 'prev')
  reclaimed = 1
end

local start = now + notBefore

-- Token bucket as GCRA: a start at s conforms when s >= tat - (burst - 1) * interval.
local tat = nil
if interval > 0 then
  tat = tonumber(redis.call('HGET', KEYS[1], 'tat'))
  if tat then
    local earliest = tat - (burst - 1) * interval
    if earliest > start then start = earliest end
  end
end

-- Exact sliding window: at most wmax starts in any (s - wlen, s].
local n = 0
if wmax > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now - wlen))
  n = redis.call('ZCARD', KEYS[2])
  if n > wmax then
    -- Only the newest wmax entries can ever decide a later start.
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - wmax - 1)
    n = wmax
  end
  if n > 0 then
    local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    local last = tonumber(newest[2])
    if last > start then start = last end
  end
  if n >= wmax then
    -- The (n - wmax + 1)-th oldest must have left the window: start >= it + wlen.
    local e = redis.call('ZRANGE', KEYS[2], n - wmax, n - wmax, 'WITHSCORES')
    local leaves = tonumber(e[2]) + wlen
    if leaves > start then start = leaves end
  end
end

-- A pause (notBefore) that decides the start is granted ahead, however far: see below.
local paused = notBefore > 0 and start <= now + notBefore

start = math.ceil(start)
local delay = start - now

if delay > maxDelay then
  local remaining = -1
  if wmax > 0 then remaining = math.max(0, wmax - n) end
  return {0, delay, remaining, start, now, 0, reclaimed}
end

if lookahead >= 0 and not paused and delay > lookahead then
  -- Too far ahead to hand out: a replica that stalls while holding a slot loses it for the
  -- fleet, so slots are granted only to a replica about to send. Nothing is recorded.
  local remaining = -1
  if wmax > 0 then remaining = math.max(0, wmax - n) end
  return {2, delay, remaining, start, now, 0, reclaimed}
end

local seq = 0
if interval > 0 or wmax > 0 then
  -- The grant's name ("start-seq", unique), kept as the latest grant with the bucket's previous
  -- state, so that its replica can give it back while nothing was granted after it (above).
  seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  local member = fmt(start) .. '-' .. seq
  local prev = ''
  if tat then prev = fmt(tat) end
  redis.call('HSET', KEYS[1], 'last', member, 'prev', prev)
end
if interval > 0 then
  local base = start
  if tat and tat > base then base = tat end
  redis.call('HSET', KEYS[1], 'tat', fmt(math.ceil(base + interval)))
end
local remaining = -1
if wmax > 0 then
  redis.call('ZADD', KEYS[2], fmt(start), fmt(start) .. '-' .. seq)
  n = n + 1
  remaining = math.max(0, wmax - n)
end

if interval > 0 or wmax > 0 then
  -- Idle expiry: nothing in either key matters once the reserved start is older than both the
  -- window and the time the bucket needs to refill.
  local keep = burst * interval
  if wmax > 0 and wlen > keep then keep = wlen end
  local ttl = math.ceil((delay + keep) / 1000) + marginMs
  redis.call('PEXPIRE', KEYS[1], fmt(ttl))
  if wmax > 0 then redis.call('PEXPIRE', KEYS[2], fmt(ttl)) end
end

return {1, delay, remaining, start, now, seq, reclaimed}
`;

/** The decoded answer of the script. */
export interface ReserveReply {
  granted: boolean;
  /**
   * Not granted, but within `maxDelay`: the start is further away than the lookahead, nothing was
   * recorded, and the caller asks again shortly before `startUs`.
   */
  later: boolean;
  /** Microseconds from Redis `now` until the (reserved or earliest allowed) start. */
  delayUs: number;
  /** Starts still allowed in the window after this call; undefined when the window is off. */
  windowRemaining: number | undefined;
  /** The (reserved or earliest allowed) start, Redis time in µs since the epoch. */
  startUs: number;
  /** Redis `TIME` when the script ran, µs since the epoch. */
  nowUs: number;
  /**
   * Granted: the grant's name (`startUs-seq`), which the caller passes back as `reclaim` should
   * it forfeit the slot unused; undefined otherwise.
   */
  name: string | undefined;
  /** The forfeited grant passed as `reclaim` was still the latest and was put back. */
  reclaimed: boolean;
}

/**
 * Extra life of idle keys beyond what the algorithm needs (ms): covers the reply's trip and a
 * replica that sleeps a little late before starting.
 */
export const EXPIRY_MARGIN_MS = 10_000;

/**
 * The two Redis keys of a budget. The `{…}` hash tag puts both in one Redis Cluster slot, as a
 * script touching two keys requires.
 */
export function reserveKeys(key: string): [state: string, starts: string] {
  return [`{${key}}:state`, `{${key}}:starts`];
}

/**
 * The replicas' announcements: KEYS[1] is the sorted set `{key}:replicas` (member = a replica's
 * random id, score = Redis `TIME` in ms of its latest heartbeat); ARGV: id, expiry in ms. Adds or
 * refreshes the caller, drops the expired, keeps the key alive for one expiry. Returns {count,
 * Redis `TIME` in µs}: the time also refines the replica's estimate of Redis's clock.
 */
export const HEARTBEAT_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - expiry)
redis.call('PEXPIRE', KEYS[1], expiry)
return {redis.call('ZCARD', KEYS[1]), tonumber(t[1]) * 1000000 + tonumber(t[2])}
`;

/** The key of the replicas' announcements, in the budget's Redis Cluster slot. */
export function replicasKey(key: string): string {
  return `{${key}}:replicas`;
}

/**
 * The script's ARGV for one reservation (all integers except the interval, which is exact).
 * Without `lookaheadMs` every start within `maxDelayMs` is granted, however far ahead.
 */
export function reserveArgs(
  limits: SlotLimits,
  maxDelayMs: number,
  notBeforeMs: number,
  lookaheadMs?: number,
  reclaim?: string,
): string[] {
  const intervalUs = limits.perSecond > 0 ? 1_000_000 / limits.perSecond : 0;
  return [
    // Full double precision: the script rounds up once per reservation, never accumulates error.
    intervalUs.toPrecision(17),
    String(Math.max(1, Math.floor(limits.burst))),
    String(Math.max(0, Math.floor(limits.windowMax))),
    String(Math.ceil(limits.windowMs * 1000)),
    // Rounding the allowance down and the pause up keeps both on the safe side.
    String(Math.floor(maxDelayMs * 1000)),
    String(Math.ceil(Math.max(0, notBeforeMs) * 1000)),
    String(EXPIRY_MARGIN_MS),
    // Rounded down: a slot is never granted further ahead than asked.
    lookaheadMs === undefined ? '-1' : String(Math.max(0, Math.floor(lookaheadMs * 1000))),
    reclaim ?? '',
  ];
}

/** Decodes the script's reply; throws when it is not the expected seven integers. */
export function parseReserveReply(reply: unknown): ReserveReply {
  if (!Array.isArray(reply) || reply.length !== 7 || !reply.every((v) => typeof v === 'number')) {
    throw new Error('unexpected reply from the shared-budget script');
  }
  const [granted, delayUs, remaining, startUs, nowUs, seq, reclaimed] = reply as number[] as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  return {
    granted: granted === 1,
    later: granted === 2,
    delayUs,
    windowRemaining: remaining < 0 ? undefined : remaining,
    startUs,
    nowUs,
    name: granted === 1 && seq > 0 ? `${startUs}-${seq}` : undefined,
    reclaimed: reclaimed === 1,
  };
}
