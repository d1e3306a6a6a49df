/**
 * Run 7, tracing and the access log: what each costs at full load and at idle. The same
 * autocannon load as run 1 (GET, 50 connections, pacing off, token held) against m2m-proxy with
 * both off, with the access log on (stdout to a file, as a container runtime keeps it), and with
 * tracing on at 100 % and 10 % sampling, exporting over OTLP/HTTP to a sink in its own process.
 * Targets are interleaved round by round and each ratio is the median of per-round ratios to
 * "off" in the same round. Idle RSS: a fresh proxy per variant, 20 requests, then idle.
 *
 * `BENCH_M2M_BASE=path/to/dist/m2m-proxy.cjs` adds the build before tracing existed ("before") to
 * both comparisons: tracing off must cost nothing against it.
 */

import { readFileSync } from 'node:fs';
import { type Ctx, pick, round, sleep, type TargetCheck } from '../lib/context.js';
import { type LoadResult, load } from '../lib/load.js';
import { type M2mOptions, M2mProxy } from '../lib/m2m.js';
import { ServerChild } from '../lib/processes.js';
import { rssMiB } from '../lib/rss.js';
import { median } from '../lib/stats.js';

export interface TelemetryTarget {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  /** Median over rounds of this target's req/s ÷ "off" in the same round. */
  vsOff: number;
  /**
   * The proxy's CPU time (user + system) per request, in µs, at a fixed 500 req/s (the same
   * batching for every target), over all rounds. Far steadier than req/s on a shared machine:
   * a neighbour's load delays the proxy but hardly changes the work it does per request.
   */
  cpuUsPerRequest: number;
  idleMiB: number;
  rounds: { rps: number; p50: number; p99: number; errors: number }[];
}

export interface TelemetryResult {
  connections: number;
  secondsPerRound: number;
  rounds: number;
  base: string | undefined;
  targets: Record<string, TelemetryTarget>;
  /** What the sink received from the 100 % tracing target over the whole run. */
  exported: { requests: number; bytes: number };
  /** Bytes of access log written by the access-log target over the whole run. */
  accessLogBytes: number;
}

const CONNECTIONS = 50;
/** The fixed rate of the CPU-per-request measurement: well below saturation on any machine. */
const FIXED_RATE = 500;
const OFF = 'off';

/** utime + stime of `pid` in seconds (/proc/PID/stat, clock ticks of 10 ms). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) start at the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

interface Variant {
  name: string;
  options: Partial<M2mOptions>;
}

/**
 * Idle RSS of a variant: the median over `runs` fresh processes (GC timing alone moves one
 * process's figure by several MiB) of the median over a second of a proxy that served 20
 * requests and then sat idle for 3 s.
 */
async function idleRss(opts: M2mOptions, runs: number): Promise<number> {
  const figures: number[] = [];
  for (let i = 0; i < runs; i++) figures.push(await idleRssOnce(opts));
  return median(figures);
}

async function idleRssOnce(opts: M2mOptions): Promise<number> {
  const proxy = await M2mProxy.start(opts);
  try {
    for (let i = 0; i < 20; i++) await (await fetch(`${proxy.url}/bench`)).text();
    await sleep(3000);
    const samples: number[] = [];
    for (let i = 0; i < 5; i++) {
      samples.push(rssMiB(proxy.pid) ?? Number.NaN);
      await sleep(200);
    }
    return median(samples);
  } finally {
    await proxy.stop();
  }
}

export async function runTelemetry(
  ctx: Ctx,
  tokenEndpoint: ServerChild,
): Promise<{ result?: TelemetryResult; checks: TargetCheck[] }> {
  if (!ctx.m2mAvailable) {
    ctx.log('  m2m-proxy: dist/m2m-proxy.cjs absent (run npm run build) — skipped');
    return { checks: [] };
  }
  const seconds = pick(ctx, 2, 1);
  const base = process.env.BENCH_M2M_BASE;
  const upstream = await ServerChild.start('upstream');
  const sink = await ServerChild.start('otlp-sink');
  const common = { upstreamUrl: upstream.url, tokenUrl: `${tokenEndpoint.url}/token` };
  const variants: Variant[] = [
    ...(base ? [{ name: 'before', options: { entry: base } }] : []),
    { name: OFF, options: {} },
    { name: 'access log', options: { log: { access: true }, stdoutToFile: true } },
    { name: 'tracing 100%', options: { tracing: { endpoint: sink.url, sampleRatio: 1 } } },
    { name: 'tracing 10%', options: { tracing: { endpoint: sink.url, sampleRatio: 0.1 } } },
  ];
  const result: TelemetryResult = {
    connections: CONNECTIONS,
    secondsPerRound: seconds,
    rounds: ctx.rounds,
    base,
    targets: {},
    exported: { requests: 0, bytes: 0 },
    accessLogBytes: 0,
  };
  const proxies = new Map<string, M2mProxy>();
  try {
    const idle = new Map<string, number>();
    for (const v of variants) {
      idle.set(v.name, await idleRss({ ...common, ...v.options }, pick(ctx, 3, 1)));
      ctx.log(`  idle RSS ${v.name}: ${idle.get(v.name)?.toFixed(1)} MiB`);
    }
    for (const v of variants)
      proxies.set(v.name, await M2mProxy.start({ ...common, ...v.options }));
    const run = (p: M2mProxy, duration: number) =>
      load({ url: `${p.url}/bench`, connections: CONNECTIONS, duration, method: 'GET' });
    ctx.log('  warm-up');
    for (const p of proxies.values()) await run(p, pick(ctx, 2, 1));
    const sinkBefore = (await sink.call('stats')) as { requests: number; bytes: number };
    const byTarget = new Map<string, LoadResult[]>(variants.map((v) => [v.name, []]));
    const cpu = new Map<string, { seconds: number; requests: number }>(
      variants.map((v) => [v.name, { seconds: 0, requests: 0 }]),
    );
    for (let r = 0; r < ctx.rounds; r++) {
      const line: string[] = [];
      // Every other round in reverse order: the load of the machine's neighbours drifts within a
      // round, and a fixed order would hand the same share of that drift to the same target.
      const order = [...proxies];
      if (r % 2 === 1) order.reverse();
      for (const [name, p] of order) {
        const res = await run(p, seconds);
        byTarget.get(name)?.push(res);
        const cpuBefore = cpuSeconds(p.pid);
        const paced = await load({
          url: `${p.url}/bench`,
          connections: 10,
          duration: pick(ctx, 3, 1),
          overallRate: FIXED_RATE,
        });
        const used = cpu.get(name);
        if (used) {
          used.seconds += cpuSeconds(p.pid) - cpuBefore;
          used.requests += paced.ok + paced.non2xx;
        }
        line.push(`${name} ${Math.round(res.rps)}${res.errors ? ` (${res.errors} err)` : ''}`);
      }
      ctx.log(`  round ${r + 1}/${ctx.rounds}: ${line.join(', ')} req/s`);
    }
    const sinkAfter = (await sink.call('stats')) as { requests: number; bytes: number };
    result.exported = {
      requests: sinkAfter.requests - sinkBefore.requests,
      bytes: sinkAfter.bytes - sinkBefore.bytes,
    };
    result.accessLogBytes = proxies.get('access log')?.stdoutBytes() ?? 0;
    const offRounds = byTarget.get(OFF) ?? [];
    for (const [name, rounds] of byTarget) {
      result.targets[name] = {
        rps: round(median(rounds.map((x) => x.rps)), 0),
        p50: round(median(rounds.map((x) => x.p50))),
        p99: round(median(rounds.map((x) => x.p99))),
        errors: rounds.reduce((s, x) => s + x.errors, 0),
        vsOff: round(median(rounds.map((x, i) => x.rps / (offRounds[i]?.rps ?? Number.NaN))), 3),
        cpuUsPerRequest: round(
          ((cpu.get(name)?.seconds ?? Number.NaN) / (cpu.get(name)?.requests ?? Number.NaN)) * 1e6,
          1,
        ),
        idleMiB: round(idle.get(name) ?? Number.NaN, 1),
        rounds: rounds.map((x) => ({
          rps: round(x.rps, 0),
          p50: round(x.p50),
          p99: round(x.p99),
          errors: x.errors,
        })),
      };
    }
  } finally {
    await Promise.all([...proxies.values()].map((p) => p.stop()));
    await Promise.all([upstream.stop(), sink.stop()]);
  }
  return { result, checks: telemetryChecks(result) };
}

function telemetryChecks(r: TelemetryResult): TargetCheck[] {
  const t = r.targets;
  const off = t[OFF];
  const checks: TargetCheck[] = [];
  const before = t.before;
  checks.push({
    target: 'tracing off: CPU per request vs the build before tracing',
    goal: '≤ 1.03×',
    measured:
      before && off
        ? `${(off.cpuUsPerRequest / before.cpuUsPerRequest).toFixed(3)}× (${off.cpuUsPerRequest} vs ${before.cpuUsPerRequest} µs; req/s ${(1 / before.vsOff).toFixed(3)}×, ${off.rps} vs ${before.rps})`
        : 'not measured (set BENCH_M2M_BASE)',
    pass: before && off ? off.cpuUsPerRequest / before.cpuUsPerRequest <= 1.03 : null,
  });
  checks.push({
    target: 'tracing off: idle RSS vs the build before tracing',
    goal: '≤ +1 MiB',
    measured: before
      ? `${off?.idleMiB} vs ${before.idleMiB} MiB`
      : 'not measured (set BENCH_M2M_BASE)',
    pass: before && off ? off.idleMiB - before.idleMiB <= 1 : null,
  });
  for (const name of ['access log', 'tracing 100%', 'tracing 10%']) {
    const x = t[name];
    if (!x || !off) continue;
    checks.push({
      target: `${name}: req/s and idle RSS vs off`,
      goal: 'measured (no target)',
      measured: `CPU/request ${(x.cpuUsPerRequest / off.cpuUsPerRequest).toFixed(2)}× (${x.cpuUsPerRequest} vs ${off.cpuUsPerRequest} µs), req/s ${x.vsOff.toFixed(3)}×, idle ${x.idleMiB} vs ${off.idleMiB} MiB`,
      pass: x.errors === 0,
    });
  }
  return checks;
}
