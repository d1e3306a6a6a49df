/**
 * Run 3, token efficiency: (a) 500 requests at the same instant on a cold proxy while the first
 * token request is still in flight (the token endpoint answers after 500 ms): exactly one token
 * request; (b) steady load across several short token lifetimes (`expires_in` 4 s,
 * minRemaining 1 s): every token lifetime sees exactly one token request (its renewal), and no
 * request waits for a renewal (pacing is off, so nothing explains a request slower than the
 * token endpoint's delay: a request that waited for a renewal was in flight for the whole
 * token request, which the bench detects by comparing the two processes' epoch clocks).
 */
import { burst } from '../lib/client.js';
import { type Ctx, pick, round, sleep, type TargetCheck } from '../lib/context.js';
import { load } from '../lib/load.js';
import { M2mProxy } from '../lib/m2m.js';
import { ServerChild } from '../lib/processes.js';

interface TokenStats {
  requests: { start: number; end: number }[];
  maxInFlight: number;
  now: number;
}

export interface TokenResult {
  coldStart: {
    concurrent: number;
    tokenRequests: number;
    maxInFlight: number;
    ok: number;
    maxLatencyMs: number;
    tokenDelayMs: number;
  };
  lifetimes: {
    expiresInS: number;
    minRemaining: string;
    seconds: number;
    tokenRequests: number;
    /** Token requests started during each (complete) token lifetime. */
    perLifetime: number[];
    renewalEveryS: number[];
    maxInFlight: number;
    requests: number;
    errors: number;
    p99Ms: number;
    maxLatencyMs: number;
    tokenDelayMs: number;
    /** Requests in flight across a whole token request (started before it, ended after it). */
    waitedForRenewal: number;
    /** The slowest request that did not span a token request (noise: GC, a busy machine). */
    maxLatencyOtherMs: number;
  };
}

const COLD_CONCURRENCY = 500;
// 500 ms: long enough that a request which waited for a renewal stands out, short enough that
// the renewal (at 3 s of a 4 s lifetime) lands before the old token expires.
const TOKEN_DELAY_MS = 500;
const EXPIRES_IN_S = 4;

export async function runToken(
  ctx: Ctx,
  tokenEndpoint: ServerChild,
): Promise<{ result?: TokenResult; checks: TargetCheck[] }> {
  const checks: TargetCheck[] = [
    {
      target: 'token requests at cold start (500 concurrent)',
      goal: 'exactly 1',
      measured: 'not measured (m2m-proxy absent)',
      pass: null,
    },
    {
      target: 'token requests per token lifetime',
      goal: 'exactly 1',
      measured: 'not measured (m2m-proxy absent)',
      pass: null,
    },
    {
      target: 'requests that waited for a renewal (pacing off)',
      goal: `0 (token endpoint answers in ${TOKEN_DELAY_MS} ms)`,
      measured: 'not measured (m2m-proxy absent)',
      pass: null,
    },
  ];
  if (!ctx.m2mAvailable) return { checks };
  const upstream = await ServerChild.start('upstream');
  try {
    // (a) cold start.
    await tokenEndpoint.call('reset', { expiresIn: 3600, delayMs: TOKEN_DELAY_MS });
    const cold = await M2mProxy.start(
      { upstreamUrl: upstream.url, tokenUrl: `${tokenEndpoint.url}/token` },
      'listening',
    );
    let coldStart: TokenResult['coldStart'];
    try {
      const outcomes = await burst(cold.url, COLD_CONCURRENCY);
      await sleep(500);
      const stats = await tokenEndpoint.call<TokenStats>('stats');
      coldStart = {
        concurrent: COLD_CONCURRENCY,
        tokenRequests: stats.requests.length,
        maxInFlight: stats.maxInFlight,
        ok: outcomes.filter((o) => o.status === 200).length,
        maxLatencyMs: round(Math.max(...outcomes.map((o) => o.ms))),
        tokenDelayMs: TOKEN_DELAY_MS,
      };
    } finally {
      await cold.stop();
    }
    ctx.log(
      `  cold start: ${coldStart.tokenRequests} token request(s) for ${coldStart.concurrent} concurrent requests, ${coldStart.ok} × 200, slowest ${coldStart.maxLatencyMs} ms`,
    );
    const [coldCheck, lifetimeCheck, latencyCheck] = checks as [
      TargetCheck,
      TargetCheck,
      TargetCheck,
    ];
    coldCheck.measured = `${coldStart.tokenRequests} (${coldStart.ok}/${COLD_CONCURRENCY} answered 200)`;
    coldCheck.pass = coldStart.tokenRequests === 1 && coldStart.ok === COLD_CONCURRENCY;

    // (b) several lifetimes under steady load.
    const seconds = pick(ctx, 15, 9);
    await tokenEndpoint.call('reset', { expiresIn: EXPIRES_IN_S, delayMs: TOKEN_DELAY_MS });
    const proxy = await M2mProxy.start({
      upstreamUrl: upstream.url,
      tokenUrl: `${tokenEndpoint.url}/token`,
      token: { minRemaining: '1s' },
    });
    let lifetimes: TokenResult['lifetimes'];
    try {
      const res = await load({
        url: `${proxy.url}/bench`,
        connections: 20,
        duration: seconds,
        timeline: true,
      });
      const stats = await tokenEndpoint.call<TokenStats>('stats');
      const reqs = stats.requests.sort((a, b) => a.start - b.start);
      // Token i is held from the end of its request until EXPIRES_IN_S later; count the token
      // requests that started in that span. Only lifetimes that ended before now are complete.
      const perLifetime: number[] = [];
      for (const r of reqs) {
        const until = r.end + EXPIRES_IN_S * 1000;
        if (until > stats.now) continue;
        perLifetime.push(reqs.filter((o) => o.start >= r.end && o.start < until).length);
      }
      const renewalEveryS = reqs
        .slice(1)
        .map((r, i) => round((r.start - (reqs[i]?.start ?? 0)) / 1000));
      // A request that waited for a renewal was in flight for the whole token request: it started
      // before the token request and ended after the token response. Both clocks are epoch ms.
      const { ends = [], latencies = [] } = res.timeline ?? {};
      let waitedForRenewal = 0;
      let maxLatencyOtherMs = 0;
      ends.forEach((end, i) => {
        const ms = latencies[i] ?? 0;
        const start = end - ms;
        if (reqs.some((t) => start <= t.start && end >= t.end)) waitedForRenewal++;
        else maxLatencyOtherMs = Math.max(maxLatencyOtherMs, ms);
      });
      lifetimes = {
        expiresInS: EXPIRES_IN_S,
        minRemaining: '1s',
        seconds,
        tokenRequests: reqs.length,
        perLifetime,
        renewalEveryS,
        maxInFlight: stats.maxInFlight,
        requests: res.ok,
        errors: res.errors,
        p99Ms: round(res.p99),
        maxLatencyMs: round(res.max),
        tokenDelayMs: TOKEN_DELAY_MS,
        waitedForRenewal,
        maxLatencyOtherMs: round(maxLatencyOtherMs),
      };
    } finally {
      await proxy.stop();
    }
    ctx.log(
      `  lifetimes: ${lifetimes.tokenRequests} token requests in ${seconds} s (renewals every ${lifetimes.renewalEveryS.join(', ')} s), per lifetime [${lifetimes.perLifetime.join(', ')}], ${lifetimes.requests} requests, ${lifetimes.errors} errors, max latency ${lifetimes.maxLatencyMs} ms, ${lifetimes.waitedForRenewal} request(s) in flight across a whole token request`,
    );
    const allOne = lifetimes.perLifetime.length > 0 && lifetimes.perLifetime.every((n) => n === 1);
    lifetimeCheck.measured = `${lifetimes.perLifetime.length ? `${Math.min(...lifetimes.perLifetime)}–${Math.max(...lifetimes.perLifetime)}` : 'none'} over ${lifetimes.perLifetime.length} lifetimes of ${EXPIRES_IN_S} s (max ${lifetimes.maxInFlight} in flight, ${lifetimes.errors} failed requests)`;
    lifetimeCheck.pass = allOne && lifetimes.maxInFlight === 1 && lifetimes.errors === 0;
    latencyCheck.measured = `${lifetimes.waitedForRenewal} (max latency ${lifetimes.maxLatencyMs} ms, p99 ${lifetimes.p99Ms} ms)`;
    latencyCheck.pass = lifetimes.waitedForRenewal === 0;
    return { result: { coldStart, lifetimes }, checks };
  } finally {
    await upstream.stop();
  }
}
