/**
 * Run 1, forwarding overhead: the same autocannon load (50 connections, keep-alive) against the
 * upstream directly and through each proxy, pacing off and the token already held, GET and POST
 * 1 KB. Targets are interleaved round by round (a, b, c, d, a, b, c, d, ...) so that a noisy
 * neighbour slows every target alike, and each ratio is the median of per-round ratios.
 */
import { type Ctx, pick, round, type TargetCheck } from '../lib/context.js';
import { type LoadResult, load } from '../lib/load.js';
import { M2mProxy } from '../lib/m2m.js';
import { Nginx } from '../lib/nginx.js';
import { ServerChild } from '../lib/processes.js';
import { median } from '../lib/stats.js';

export const METHODS = ['GET', 'POST'] as const;
export type Method = (typeof METHODS)[number];

export interface TargetSummary {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  rounds: { rps: number; p50: number; p99: number; errors: number }[];
}

export interface OverheadResult {
  connections: number;
  secondsPerRound: number;
  rounds: number;
  skipped: string[];
  methods: Partial<Record<Method, Record<string, TargetSummary>>>;
  /** Median over rounds of m2m-proxy's req/s divided by each other target's in the same round. */
  ratios: Partial<Record<Method, Record<string, number>>>;
}

interface Target {
  name: string;
  url: string;
}

const CONNECTIONS = 50;
/**
 * Load before the rounds, per target. The image lets V8 optimise a function only after 30,000
 * calls (its tiering flags, docs/benchmarks.md "Memory footprint"): at ≈ 10,000 requests per
 * second m2m-proxy reaches full speed after a few seconds, and the rounds measure it there.
 */
const WARM_UP_SECONDS = 8;
const body1k = Buffer.alloc(1024, 'x');

export async function runOverhead(
  ctx: Ctx,
  tokenEndpoint: ServerChild,
): Promise<{ result: OverheadResult; checks: TargetCheck[] }> {
  // Short rounds, many of them: the neighbours' load comes and goes within seconds, so a pair of
  // targets measured 2 s apart sees the same machine more often than a pair 5 s apart.
  const seconds = pick(ctx, 2, 1);
  const skipped: string[] = [];
  const upstream = await ServerChild.start('upstream');
  const httpProxy = await ServerChild.start('http-proxy', ['--target', upstream.url]);
  const undiciProxy = await ServerChild.start('undici-proxy', ['--target', upstream.url]);
  const nginx = ctx.nginx ? await Nginx.start(upstream.port) : undefined;
  if (!ctx.nginx) skipped.push('nginx: not installed (/usr/sbin/nginx absent) — skipped');
  if (!ctx.m2mAvailable)
    skipped.push('m2m-proxy: dist/m2m-proxy.cjs absent (run npm run build) — skipped');
  for (const line of skipped) ctx.log(`  ${line}`);

  const result: OverheadResult = {
    connections: CONNECTIONS,
    secondsPerRound: seconds,
    rounds: ctx.rounds,
    skipped,
    methods: {},
    ratios: {},
  };
  try {
    for (const method of METHODS) {
      // A fresh m2m-proxy per method, so that with BENCH_CPU_PROF=1 each method gets its own
      // profile (the GET profile is the one to read for per-request overhead).
      const m2m = ctx.m2mAvailable
        ? await M2mProxy.start({
            upstreamUrl: upstream.url,
            tokenUrl: `${tokenEndpoint.url}/token`,
            cpuProf: ctx.cpuProf,
          })
        : undefined;
      if (m2m && ctx.cpuProf) ctx.log(`  m2m-proxy ${method} profile: pid ${m2m.pid}`);
      const targets: Target[] = [
        { name: 'direct', url: upstream.url },
        { name: 'http-proxy', url: httpProxy.url },
        ...(m2m ? [{ name: 'm2m-proxy', url: m2m.url }] : []),
        ...(nginx ? [{ name: 'nginx', url: nginx.url }] : []),
        { name: 'undici-stream', url: undiciProxy.url },
      ];
      const run = (t: Target, duration: number) =>
        load({
          url: `${t.url}/bench`,
          connections: CONNECTIONS,
          duration,
          method,
          ...(method === 'POST' ? { body: body1k } : {}),
        });
      try {
        ctx.log(`  ${method}: warm-up`);
        for (const t of targets) await run(t, pick(ctx, WARM_UP_SECONDS, 1));
        const byTarget = new Map<string, LoadResult[]>(targets.map((t) => [t.name, []]));
        for (let r = 0; r < ctx.rounds; r++) {
          const line: string[] = [];
          for (const t of targets) {
            const res = await run(t, seconds);
            byTarget.get(t.name)?.push(res);
            line.push(
              `${t.name} ${Math.round(res.rps)}${res.errors ? ` (${res.errors} err)` : ''}`,
            );
          }
          ctx.log(`  ${method} round ${r + 1}/${ctx.rounds}: ${line.join(', ')} req/s`);
        }
        const summary: Record<string, TargetSummary> = {};
        for (const [name, rounds] of byTarget) {
          summary[name] = {
            rps: round(median(rounds.map((x) => x.rps)), 0),
            p50: round(median(rounds.map((x) => x.p50))),
            p99: round(median(rounds.map((x) => x.p99))),
            errors: rounds.reduce((s, x) => s + x.errors, 0),
            rounds: rounds.map((x) => ({
              rps: round(x.rps, 0),
              p50: round(x.p50),
              p99: round(x.p99),
              errors: x.errors,
            })),
          };
        }
        result.methods[method] = summary;
        const m2mRounds = byTarget.get('m2m-proxy');
        if (m2mRounds) {
          const ratios: Record<string, number> = {};
          for (const [name, rounds] of byTarget) {
            if (name === 'm2m-proxy') continue;
            ratios[name] = round(
              median(rounds.map((x, i) => (m2mRounds[i]?.rps ?? Number.NaN) / x.rps)),
              3,
            );
          }
          result.ratios[method] = ratios;
        }
      } finally {
        await m2m?.stop();
      }
    }
  } finally {
    await nginx?.stop();
    await Promise.all([upstream.stop(), httpProxy.stop(), undiciProxy.stop()]);
  }
  return { result, checks: overheadChecks(ctx, result) };
}

function overheadChecks(ctx: Ctx, result: OverheadResult): TargetCheck[] {
  const checks: TargetCheck[] = [];
  for (const method of METHODS) {
    const ratios = result.ratios[method];
    const m2m = result.methods[method]?.['m2m-proxy'];
    const vsHttpProxy = ratios?.['http-proxy'];
    checks.push({
      target: `${method} req/s vs http-proxy`,
      goal: '≥ 1.3×',
      measured:
        vsHttpProxy === undefined
          ? 'not measured (m2m-proxy absent)'
          : `${vsHttpProxy.toFixed(2)}× (median of per-round ratios; medians ${m2m?.rps} vs ${result.methods[method]?.['http-proxy']?.rps} req/s)`,
      pass: vsHttpProxy === undefined ? null : vsHttpProxy >= 1.3,
    });
    const vsNginx = ratios?.nginx;
    checks.push({
      target: `${method} req/s vs nginx`,
      goal: '≥ 0.5×',
      measured:
        vsNginx === undefined
          ? ctx.nginx
            ? 'not measured (m2m-proxy absent)'
            : 'skipped (nginx not installed)'
          : `${vsNginx.toFixed(2)}× (median of per-round ratios; medians ${m2m?.rps} vs ${result.methods[method]?.nginx?.rps} req/s)`,
      pass: vsNginx === undefined ? null : vsNginx >= 0.5,
    });
  }
  return checks;
}
