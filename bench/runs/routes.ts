/**
 * Run 7, routes: several APIs from one m2m-proxy process.
 * (a) Overhead per request for 1, 2 and 8 routes: the same autocannon load (8 clients × 6
 *     connections, pacing off, one shared token) spread round-robin over the routes' ports, so
 *     the client side is identical whatever the route count; configurations are interleaved round
 *     by round and each one's req/s is compared with 1 route's in the same round.
 * (b) Two routes saturated at once, each paced to its own rate (6/s and 10/s) on its own
 *     upstream: each keeps its pacing exactness (starts in any sliding second, smallest gap).
 * (c) Idle RSS with 1, 2 and 8 routes (after a few requests on every route): the cost of a route.
 */
import { captureWire, type MeasuredAt, preferWire } from '../lib/capture.js';
import { type Ctx, pick, round, sleep, type TargetCheck } from '../lib/context.js';
import { type LoadResult, load } from '../lib/load.js';
import { M2mProxy } from '../lib/m2m.js';
import { ServerChild } from '../lib/processes.js';
import { rssMiB } from '../lib/rss.js';
import { achievedRate, median, type SecondStats, secondStats } from '../lib/stats.js';

export const ROUTE_COUNTS = [1, 2, 8] as const;

export interface RoutesResult {
  overhead: {
    connections: number;
    secondsPerRound: number;
    rounds: number;
    /** Per route count: median over rounds of total req/s, and of the per-route p50/p99. */
    byRoutes: Record<string, { rps: number; p50: number; p99: number; errors: number }>;
    /** Median over rounds of (req/s with N routes) ÷ (req/s with 1 route in the same round). */
    ratioTo1: Record<string, number>;
  };
  saturated: Array<{
    route: string;
    perSecond: number;
    starts: number;
    achievedPerSecond: number;
    measuredAt: MeasuredAt;
    maxInAnySecond: number;
    minGapMs: number;
    /** The upstream handler's own record (it adds its scheduling delays). */
    handler: SecondStats;
  }>;
  memory: {
    /** Idle RSS (MiB) per route count. */
    idleMiB: Record<string, number>;
    /** (RSS with 8 routes − RSS with 1 route) ÷ 7. */
    perAddedRouteMiB: number;
  };
}

const CONNECTIONS = 48;

async function idleRss(pid: number): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    await sleep(200);
    samples.push(rssMiB(pid) ?? Number.NaN);
  }
  return median(samples);
}

/** Autocannon instances per measurement, whatever the route count (8: one per route at most). */
const CLIENTS = 8;

/** `CLIENTS` loads at once, the i-th on route i mod N: the same client work for every N. */
async function spread(proxy: M2mProxy, seconds: number): Promise<LoadResult[]> {
  return Promise.all(
    Array.from({ length: CLIENTS }, (_, i) =>
      load({
        url: `http://127.0.0.1:${proxy.ports[i % proxy.ports.length]}/r`,
        connections: CONNECTIONS / CLIENTS,
        duration: seconds,
      }),
    ),
  );
}

export async function runRoutes(
  ctx: Ctx,
  tokenEndpoint: ServerChild,
): Promise<{ result?: RoutesResult; checks: TargetCheck[] }> {
  const absent = 'not measured (m2m-proxy absent)';
  const checks: TargetCheck[] = [
    {
      target: 'req/s with 8 routes vs 1 route',
      goal: '≥ 90% (overhead does not grow with routes)',
      measured: absent,
      pass: null,
    },
    {
      target: 'two saturated routes: starts in any sliding second',
      goal: "≤ each route's perSecond",
      measured: absent,
      pass: null,
    },
    { target: 'idle RSS per added route', goal: '≤ 2 MB', measured: absent, pass: null },
  ];
  if (!ctx.m2mAvailable) return { checks };
  await tokenEndpoint.call('reset', { expiresIn: 3600, delayMs: 0 });
  const tokenUrl = `${tokenEndpoint.url}/token`;
  const upstream = await ServerChild.start('upstream');
  const seconds = pick(ctx, 2, 1);
  const result: RoutesResult = {
    overhead: {
      connections: CONNECTIONS,
      secondsPerRound: seconds,
      rounds: ctx.rounds,
      byRoutes: {},
      ratioTo1: {},
    },
    saturated: [],
    memory: { idleMiB: {}, perAddedRouteMiB: Number.NaN },
  };
  try {
    // (a) and (c): one process per route count, all alive together, measured in turns.
    const proxies = new Map<number, M2mProxy>();
    for (const n of ROUTE_COUNTS) {
      proxies.set(
        n,
        await M2mProxy.start({
          upstreamUrl: upstream.url,
          tokenUrl,
          routes: Array.from({ length: n }, () => ({ upstreamUrl: upstream.url })),
        }),
      );
    }
    try {
      for (const [n, proxy] of proxies) {
        // A few requests on every route first: idle here means "has served", not "fresh".
        await Promise.all(
          proxy.ports.map((port) =>
            load({ url: `http://127.0.0.1:${port}/warm`, connections: 2, amount: 50 }),
          ),
        );
        await sleep(500);
        result.memory.idleMiB[n] = round(await idleRss(proxy.pid), 1);
      }
      type Round = { rps: number; p50: number; p99: number; errors: number };
      const rounds: Record<number, Round[]> = Object.fromEntries(
        ROUTE_COUNTS.map((n) => [n, [] as Round[]]),
      );
      for (let r = 0; r < ctx.rounds; r++) {
        for (const [n, proxy] of proxies) {
          const loads = await spread(proxy, seconds);
          rounds[n]?.push({
            rps: loads.reduce((sum, l) => sum + l.rps, 0),
            p50: median(loads.map((l) => l.p50)),
            p99: median(loads.map((l) => l.p99)),
            errors: loads.reduce((sum, l) => sum + l.errors, 0),
          });
        }
      }
      for (const n of ROUTE_COUNTS) {
        const list = rounds[n] ?? [];
        result.overhead.byRoutes[n] = {
          rps: Math.round(median(list.map((x) => x.rps))),
          p50: round(median(list.map((x) => x.p50)), 2),
          p99: round(median(list.map((x) => x.p99)), 2),
          errors: list.reduce((sum, x) => sum + x.errors, 0),
        };
        result.overhead.ratioTo1[n] = round(
          median(list.map((x, i) => x.rps / (rounds[1]?.[i]?.rps ?? Number.NaN))),
          3,
        );
      }
    } finally {
      await Promise.all([...proxies.values()].map((p) => p.stop()));
    }
    const one = result.memory.idleMiB[1] ?? Number.NaN;
    const eight = result.memory.idleMiB[8] ?? Number.NaN;
    result.memory.perAddedRouteMiB = round((eight - one) / 7, 2);

    // (b) two routes, each saturated on its own upstream at its own rate.
    const rates = [6, 10];
    const ups = await Promise.all(rates.map(() => ServerChild.start('upstream')));
    const queue = { max: 100_000, timeout: '600s' };
    const two = await M2mProxy.start({
      upstreamUrl: upstream.url,
      tokenUrl,
      routes: rates.map((perSecond, i) => ({
        upstreamUrl: (ups[i] as ServerChild).url,
        rateLimit: { perSecond, burst: 1, window: { max: 0 }, queue },
      })),
    });
    try {
      const runSeconds = pick(ctx, 30, 8);
      // Arrival times on the wire where tcpdump is available, as the pacing run measures.
      const wires = await Promise.all(ups.map((u) => captureWire(u.port)));
      await Promise.all(ups.map((u) => u.call('startRecording')));
      await Promise.all(
        two.ports.map((port) =>
          load({
            url: `http://127.0.0.1:${port}/paced`,
            connections: 25,
            duration: runSeconds,
            timeout: 600,
          }),
        ),
      );
      for (const [i, up] of ups.entries()) {
        const handler = (await up.call<number[]>('stopRecording')).sort((x, y) => x - y);
        const { times, measuredAt } = preferWire(await wires[i]?.stop(), handler, ctx.log);
        result.saturated.push({
          route: `route-${i}`,
          perSecond: rates[i] as number,
          starts: handler.length,
          achievedPerSecond: round(achievedRate(handler), 3),
          measuredAt,
          ...secondStats(times),
          handler: secondStats(handler),
        });
      }
    } finally {
      await two.stop();
      await Promise.all(ups.map((u) => u.stop()));
    }
  } finally {
    await upstream.stop();
  }

  const ratio8 = result.overhead.ratioTo1[8] ?? Number.NaN;
  checks[0] = {
    ...(checks[0] as TargetCheck),
    measured: `${(ratio8 * 100).toFixed(1)}% (1: ${result.overhead.byRoutes[1]?.rps} req/s, 2: ${result.overhead.byRoutes[2]?.rps}, 8: ${result.overhead.byRoutes[8]?.rps})`,
    pass: ratio8 >= 0.9,
  };
  checks[1] = {
    ...(checks[1] as TargetCheck),
    measured: result.saturated
      .map((s) => `${s.route}: ${s.maxInAnySecond}/${s.perSecond}, min gap ${s.minGapMs} ms`)
      .join('; '),
    pass: result.saturated.every((s) => s.maxInAnySecond <= s.perSecond),
  };
  checks[2] = {
    ...(checks[2] as TargetCheck),
    measured: `${result.memory.perAddedRouteMiB} MiB (1 route ${result.memory.idleMiB[1]} MiB, 8 routes ${result.memory.idleMiB[8]} MiB)`,
    pass: result.memory.perAddedRouteMiB <= 2,
  };
  return { result, checks };
}
