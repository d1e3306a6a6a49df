/**
 * Run 6, the fleet run (docs/fleet.md): three m2m-proxy replicas sharing one
 * `rateLimit.shared.key` on a real `redis-server`, all loaded at once, in front of ONE upstream
 * that records arrival times. Reports the achieved fleet rate, the most starts in any sliding
 * second for the fleet, and the Redis round trip added per request (p99 of
 * `m2m_proxy_shared_budget_reserve_duration_seconds`: one reservation per request).
 * Skipped, with a line saying so, when `redis-server` is not installed.
 */
import { randomUUID } from 'node:crypto';
import { type RedisServer, startRedis } from '../../fixtures/redis.js';
import { captureWire, type MeasuredAt, preferWire } from '../lib/capture.js';
import { type Ctx, pick, round, sleep, type TargetCheck } from '../lib/context.js';
import { load } from '../lib/load.js';
import { M2mProxy } from '../lib/m2m.js';
import { ServerChild } from '../lib/processes.js';
import {
  achievedRate,
  histogramQuantile,
  metricValue,
  type SecondStats,
  secondStats,
} from '../lib/stats.js';

export interface FleetResult {
  replicas: number;
  perSecond: number;
  burst: number;
  connectionsPerReplica: number;
  seconds: number;
  starts: number;
  /** Upstream responses per replica (its `m2m_proxy_upstream_responses_total`), in order. */
  startsPerReplica: number[];
  achievedPerSecond: number;
  achievedShare: number;
  /** From the packets on the wire (tcpdump) when available, else from the upstream's handler. */
  measuredAt: MeasuredAt;
  maxInAnySecond: number;
  minGapMs: number;
  /** The upstream handler's own record, for comparison (it adds its scheduling delays). */
  handler: SecondStats;
  /** The largest of the replicas' reservation round-trip p99s, ms. */
  redisRoundTripP99Ms: number | undefined;
  /** Each replica's reservation round-trip p99, ms. */
  redisRoundTripP99MsPerReplica: (number | undefined)[];
  /** Each replica's reservation round-trip median, ms. */
  redisRoundTripP50MsPerReplica: (number | undefined)[];
}

const REPLICAS = 3;
const CONNECTIONS = 20;
const PER_SECOND = 6;
/**
 * The reply's trip delays each start by that much (the replica sleeps the reserved delay after
 * the reply arrives), so it must stay small against the spacing of starts: 10% of 1/perSecond.
 */
const ROUND_TRIP_GOAL_MS = 100 / PER_SECOND;

export async function runFleet(
  ctx: Ctx,
  tokenEndpoint: ServerChild,
): Promise<{ result?: FleetResult; checks: TargetCheck[] }> {
  const checks: TargetCheck[] = [
    {
      target: 'fleet: starts in any sliding second (3 replicas, one key)',
      goal: `≤ perSecond (${PER_SECOND})`,
      measured: '',
      pass: null,
    },
    {
      target: 'fleet: achieved rate (3 replicas, one key)',
      goal: '≥ 95% of perSecond',
      measured: '',
      pass: null,
    },
    {
      target: 'fleet: Redis round trip per request, p99',
      goal: `≤ 10% of 1/perSecond (${ROUND_TRIP_GOAL_MS.toFixed(1)} ms)`,
      measured: '',
      pass: null,
    },
  ];
  const skip = (why: string) => {
    for (const check of checks) check.measured = why;
    return { checks };
  };
  if (!ctx.m2mAvailable) return skip('not measured (m2m-proxy absent)');
  let redis: RedisServer;
  try {
    redis = await startRedis();
  } catch (error) {
    ctx.log(`  redis-server: ${String(error)} — the fleet run is skipped`);
    return skip('not measured (redis-server not installed)');
  }
  await tokenEndpoint.call('reset', { expiresIn: 3600, delayMs: 0 });
  const seconds = pick(ctx, 60, 10);
  const key = `m2m-bench:${randomUUID()}`;

  const upstream = await ServerChild.start('upstream');
  const started = await Promise.allSettled(
    Array.from({ length: REPLICAS }, () =>
      M2mProxy.start({
        upstreamUrl: upstream.url,
        tokenUrl: `${tokenEndpoint.url}/token`,
        rateLimit: {
          perSecond: PER_SECOND,
          burst: 1,
          window: { max: 0 },
          queue: { max: 100_000, timeout: '600s' },
          shared: { redis: redis.url, key },
        },
      }),
    ),
  );
  const fleet = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  try {
    const failed = started.find((s) => s.status === 'rejected');
    if (failed) throw failed.reason;
    // A first request per replica (JIT, connections), outside the measurement; the round-trip
    // p99 counts only the reservations made after this scrape.
    await Promise.all(fleet.map((proxy) => fetch(`${proxy.url}/warm-up`).then((r) => r.text())));
    const warm = await Promise.all(fleet.map((proxy) => proxy.metrics()));
    // Let the warm-ups' slots pass: the measured run starts from an idle budget.
    await sleep(1000);
    // ONE upstream for the fleet, as the WAF sees it: its arrival times are the fleet's starts.
    const wire = await captureWire(upstream.port);
    await upstream.call('startRecording');
    const loads = await Promise.all(
      fleet.map((proxy) =>
        load({
          url: `${proxy.url}/fleet`,
          connections: CONNECTIONS,
          duration: seconds,
          timeout: 600,
        }),
      ),
    );
    const arrivals = (await upstream.call<number[]>('stopRecording')).sort((a, b) => a - b);
    const { times: seen, measuredAt } = preferWire(await wire?.stop(), arrivals, ctx.log);
    const texts = await Promise.all(fleet.map((proxy) => proxy.metrics()));
    const count200 = (text: string | undefined) =>
      Number(
        /^m2m_proxy_upstream_responses_total\{route="default",code="200"\} (\S+)$/m.exec(
          text ?? '',
        )?.[1] ?? 0,
      );
    const perReplica = texts.map((text, i) => count200(text) - count200(warm[i]));
    const roundTripMs = (q: number) =>
      texts.map((text, i) => {
        const s = histogramQuantile(
          text,
          'm2m_proxy_shared_budget_reserve_duration_seconds',
          q,
          warm[i],
        );
        return s === undefined ? undefined : round(s * 1000, 3);
      });
    const p99s = roundTripMs(0.99);
    const p50s = roundTripMs(0.5);
    // The fleet stayed on the shared budget the whole run (a fallback would pace alone).
    const sharedUp = texts.map((text) => metricValue(text, 'm2m_proxy_shared_budget_up'));
    const known = p99s.filter((q): q is number => q !== undefined);
    const achieved = achievedRate(arrivals);
    const result: FleetResult = {
      replicas: REPLICAS,
      perSecond: PER_SECOND,
      burst: 1,
      connectionsPerReplica: CONNECTIONS,
      seconds,
      starts: arrivals.length,
      startsPerReplica: perReplica,
      achievedPerSecond: round(achieved, 3),
      achievedShare: round(achieved / PER_SECOND, 4),
      measuredAt,
      ...secondStats(seen),
      handler: secondStats(arrivals),
      redisRoundTripP99Ms: known.length > 0 ? Math.max(...known) : undefined,
      redisRoundTripP99MsPerReplica: p99s,
      redisRoundTripP50MsPerReplica: p50s,
    };
    const errors = loads.reduce((n, l) => n + l.errors, 0);
    ctx.log(
      `  fleet: ${result.starts} starts in ${seconds} s (${result.startsPerReplica.join(' + ')}) → ${result.achievedPerSecond}/s (${(result.achievedShare * 100).toFixed(1)}%), max ${result.maxInAnySecond} in any second, min gap ${result.minGapMs} ms on the ${result.measuredAt} (handler: max ${result.handler.maxInAnySecond}, min gap ${result.handler.minGapMs} ms), Redis round trip p50 ${p50s.map((q) => q ?? 'n/a').join(' / ')} ms, p99 ${p99s.map((q) => q ?? 'n/a').join(' / ')} ms, client errors ${errors}, shared_budget_up ${sharedUp.join('/')}`,
    );
    const [perSecondCheck, achievedCheck, roundTripCheck] = checks as [
      TargetCheck,
      TargetCheck,
      TargetCheck,
    ];
    perSecondCheck.measured = `${result.maxInAnySecond} on the ${result.measuredAt} (min gap ${result.minGapMs} ms, ${result.starts} starts in ${seconds} s; upstream handler: ${result.handler.maxInAnySecond}, min gap ${result.handler.minGapMs} ms)`;
    perSecondCheck.pass = result.maxInAnySecond <= PER_SECOND;
    achievedCheck.measured = `${result.achievedPerSecond}/s = ${(result.achievedShare * 100).toFixed(1)}% (${result.startsPerReplica.join(' + ')} per replica)`;
    achievedCheck.pass = result.achievedShare >= 0.95;
    roundTripCheck.measured =
      result.redisRoundTripP99Ms === undefined
        ? 'no reservations recorded'
        : `${result.redisRoundTripP99Ms} ms (largest of the 3 replicas; p50 ${p50s.map((q) => q ?? 'n/a').join(' / ')} ms)`;
    roundTripCheck.pass =
      result.redisRoundTripP99Ms === undefined
        ? false
        : result.redisRoundTripP99Ms <= ROUND_TRIP_GOAL_MS;
    return { result, checks };
  } finally {
    await Promise.all(fleet.map((proxy) => proxy.stop()));
    await upstream.stop();
    await redis.stop();
  }
}
