/**
 * Run 2, added latency at a fixed rate: autocannon at `overallRate` 1000 req/s (well below
 * saturation, so queues do not form) against the upstream directly, through m2m-proxy and,
 * for reference, through the bare undici forwarder (what any Node proxy on undici adds on this
 * machine), interleaved. The added latency is the median over rounds of (proxy − direct) per
 * round.
 */
import { type Ctx, pick, round, type TargetCheck } from '../lib/context.js';
import { type LoadResult, load } from '../lib/load.js';
import { M2mProxy } from '../lib/m2m.js';
import { ServerChild } from '../lib/processes.js';
import { median } from '../lib/stats.js';

export interface LatencyResult {
  rate: number;
  connections: number;
  secondsPerRound: number;
  rounds: number;
  direct: { p50: number; p99: number };
  m2m: { p50: number; p99: number; errors: number };
  added: { p50: number; p99: number };
  /** The same for the bare undici `Pool.stream` forwarder. */
  undiciAdded: { p50: number; p99: number };
}

const RATE = 1000;
const CONNECTIONS = 10;

export async function runLatency(
  ctx: Ctx,
  tokenEndpoint: ServerChild,
): Promise<{ result?: LatencyResult; checks: TargetCheck[] }> {
  const check: TargetCheck = {
    target: 'added p99 at 1000 req/s',
    goal: '≤ 2 ms over direct',
    measured: 'not measured (m2m-proxy absent)',
    pass: null,
  };
  if (!ctx.m2mAvailable) return { checks: [check] };
  const seconds = pick(ctx, 3, 2);
  const upstream = await ServerChild.start('upstream');
  const undici = await ServerChild.start('undici-proxy', ['--target', upstream.url]);
  const m2m = await M2mProxy.start({
    upstreamUrl: upstream.url,
    tokenUrl: `${tokenEndpoint.url}/token`,
  });
  try {
    const run = (url: string, duration: number) =>
      load({ url: `${url}/bench`, connections: CONNECTIONS, duration, overallRate: RATE });
    await run(upstream.url, 1);
    await run(m2m.url, 1);
    await run(undici.url, 1);
    const direct: LoadResult[] = [];
    const proxied: LoadResult[] = [];
    const reference: LoadResult[] = [];
    for (let r = 0; r < ctx.rounds; r++) {
      const d = await run(upstream.url, seconds);
      const p = await run(m2m.url, seconds);
      const u = await run(undici.url, seconds);
      direct.push(d);
      proxied.push(p);
      reference.push(u);
      ctx.log(
        `  round ${r + 1}/${ctx.rounds}: direct p50 ${d.p50.toFixed(2)} p99 ${d.p99.toFixed(2)} ms, m2m-proxy p50 ${p.p50.toFixed(2)} p99 ${p.p99.toFixed(2)} ms (${Math.round(p.rps)} req/s), undici-stream p50 ${u.p50.toFixed(2)} p99 ${u.p99.toFixed(2)} ms`,
      );
    }
    const added = (runs: LoadResult[], q: 'p50' | 'p99') =>
      round(median(runs.map((x, i) => x[q] - (direct[i]?.[q] ?? 0))));
    const result: LatencyResult = {
      rate: RATE,
      connections: CONNECTIONS,
      secondsPerRound: seconds,
      rounds: ctx.rounds,
      direct: {
        p50: round(median(direct.map((x) => x.p50))),
        p99: round(median(direct.map((x) => x.p99))),
      },
      m2m: {
        p50: round(median(proxied.map((x) => x.p50))),
        p99: round(median(proxied.map((x) => x.p99))),
        errors: proxied.reduce((s, x) => s + x.errors, 0),
      },
      added: { p50: added(proxied, 'p50'), p99: added(proxied, 'p99') },
      undiciAdded: { p50: added(reference, 'p50'), p99: added(reference, 'p99') },
    };
    check.measured = `+${result.added.p99.toFixed(2)} ms (p99 ${result.m2m.p99} vs ${result.direct.p99} ms; p50 +${result.added.p50.toFixed(2)} ms; the bare undici forwarder: p99 +${result.undiciAdded.p99.toFixed(2)}, p50 +${result.undiciAdded.p50.toFixed(2)} ms)`;
    check.pass = result.added.p99 <= 2 && result.m2m.errors === 0;
    return { result, checks: [check] };
  } finally {
    await m2m.stop();
    await Promise.all([undici.stop(), upstream.stop()]);
  }
}
