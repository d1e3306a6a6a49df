/**
 * `npm run bench`: proves that m2m-proxy is fast, paces exactly and stays small (bench/README.md).
 * Runs the five runs in order, prints a table per run and the targets with PASS/FAIL, and
 * writes bench/results/latest.{json,svg,md}. Every figure that is compared is compared with a
 * baseline measured in the same run, because these machines are noisy.
 *
 * Environment:
 *   BENCH_QUICK=1     shorter runs (smoke check, ~2 min); results go to results/quick.*
 *   BENCH_ONLY=a,b    only these runs: overhead, latency, token, pacing, memory, fleet, routes,
 *                     telemetry
 *                     (results go to results/partial.*, as with BENCH_CPU_PROF)
 *   BENCH_ROUNDS=n    rounds per target in the interleaved runs (default 7, QUICK 1)
 *   BENCH_CPU_PROF=1  run m2m-proxy with --cpu-prof (profiles in results/prof, summarised)
 *   BENCH_STRICT=1    exit 1 when a target fails
 *   BENCH_NGINX=path  nginx binary (default /usr/sbin/nginx; skipped when absent)
 *   BENCH_M2M=path    the proxy's entry point (default dist/m2m-proxy.cjs)
 *   BENCH_M2M_BASE=path a build before tracing existed, compared in the telemetry run
 *   BENCH_NODES=a,b   other node binaries to measure the idle RSS on too (run "memory")
 *   BENCH_TCPDUMP=path tcpdump binary for arrival times on the wire (default /usr/bin/tcpdump)
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import type { Ctx, TargetCheck } from './lib/context.js';
import { withResults } from './lib/docs.js';
import { mainJs, profDir, repoRoot } from './lib/m2m.js';
import { nginxVersion } from './lib/nginx.js';
import { capture, ServerChild } from './lib/processes.js';
import { summarizeProfile } from './lib/profile.js';
import { CHECK_HEAD, checkRows, markdownTable, textTable } from './lib/report.js';
import { type ChartSeries, chartSvg } from './lib/svg.js';
import { runFleet } from './runs/fleet.js';
import { runLatency } from './runs/latency.js';
import { runMemory } from './runs/memory.js';
import { METHODS, type OverheadResult, runOverhead } from './runs/overhead.js';
import { runPacing } from './runs/pacing.js';
import { type RoutesResult, runRoutes } from './runs/routes.js';
import { runTelemetry, type TelemetryResult } from './runs/telemetry.js';
import { runToken } from './runs/token.js';

const RUNS = [
  'overhead',
  'latency',
  'token',
  'pacing',
  'memory',
  'fleet',
  'routes',
  'telemetry',
] as const;
type RunName = (typeof RUNS)[number];
type Runner = (
  ctx: Ctx,
  token: ServerChild,
) => Promise<{ result?: unknown; checks: TargetCheck[] }>;

const TITLES: Record<RunName, string> = {
  overhead: '1. Forwarding overhead (pacing off, token held)',
  latency: '2. Added latency at a fixed rate (1000 req/s)',
  token: '3. Token efficiency',
  pacing: '4. Pacing accuracy',
  memory: '5. Memory (RSS)',
  fleet: '6. Fleet (3 replicas, shared budget through Redis)',
  routes: '7. Routes (several APIs in one process)',
  telemetry: '8. Tracing and the access log (GET, pacing off, token held)',
};

const runners: Record<RunName, Runner> = {
  overhead: runOverhead,
  latency: runLatency,
  token: runToken,
  pacing: runPacing,
  memory: runMemory,
  fleet: runFleet,
  routes: runRoutes,
  telemetry: runTelemetry,
};

/** The routes run's figures as a table (route count → req/s, latency, idle RSS). */
function routesTable(r: RoutesResult): string {
  const head = ['routes', 'req/s', '÷ 1 route', 'p50 ms', 'p99 ms', 'errors', 'idle RSS MiB'];
  const rows = Object.entries(r.overhead.byRoutes).map(([n, s]) => [
    n,
    String(s.rps),
    String(r.overhead.ratioTo1[n]),
    s.p50.toFixed(2),
    s.p99.toFixed(2),
    String(s.errors),
    String(r.memory.idleMiB[n]),
  ]);
  const saturated = r.saturated.map(
    (s) =>
      `  ${s.route} saturated at ${s.perSecond}/s: ${s.starts} starts, ${s.achievedPerSecond}/s, max ${s.maxInAnySecond} in any second, min gap ${s.minGapMs} ms on the ${s.measuredAt} (handler: max ${s.handler.maxInAnySecond}, min gap ${s.handler.minGapMs} ms)`,
  );
  return [
    textTable(head, rows),
    `  idle RSS per added route: ${r.memory.perAddedRouteMiB} MiB`,
    ...saturated,
  ].join('\n');
}

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m?.[1]) return m[1].trim();
  } catch {}
  return cpus()[0]?.model ?? 'unknown';
}

function overheadTables(o: OverheadResult): { text: string; md: string } {
  const head = ['target', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'm2m-proxy ÷ target'];
  const text: string[] = [];
  const md: string[] = [];
  for (const method of METHODS) {
    const summary = o.methods[method];
    if (!summary) continue;
    const rows = Object.entries(summary).map(([name, s]) => {
      const ratio = o.ratios[method]?.[name];
      return [
        name,
        s.rps,
        s.p50.toFixed(2),
        s.p99.toFixed(2),
        s.errors,
        name === 'm2m-proxy' ? '—' : ratio === undefined ? 'n/a' : `${ratio.toFixed(2)}×`,
      ];
    });
    const title = `${method}${method === 'POST' ? ' 1 KB' : ''} — ${o.connections} connections, median of ${o.rounds} interleaved rounds × ${o.secondsPerRound} s`;
    text.push(`  ${title}`, textTable(head, rows).replace(/^/gm, '  '));
    md.push(`**${title}**`, '', markdownTable(head, rows), '');
  }
  return { text: text.join('\n'), md: md.join('\n') };
}

function telemetryTables(t: TelemetryResult): { text: string; md: string } {
  const head = [
    'm2m-proxy',
    'CPU µs/req',
    'req/s',
    '÷ off',
    'p50 ms',
    'p99 ms',
    'errors',
    'idle RSS MiB',
  ];
  const rows = Object.entries(t.targets).map(([name, x]) => [
    name,
    x.cpuUsPerRequest.toFixed(1),
    x.rps,
    `${x.vsOff.toFixed(3)}×`,
    x.p50.toFixed(2),
    x.p99.toFixed(2),
    x.errors,
    x.idleMiB.toFixed(1),
  ]);
  const title = `${t.connections} connections, median of ${t.rounds} interleaved rounds × ${t.secondsPerRound} s; tracing 100% exported ${t.exported.requests} OTLP requests (${(t.exported.bytes / 1e6).toFixed(1)} MB); access log ${(t.accessLogBytes / 1e6).toFixed(1)} MB`;
  return {
    text: [`  ${title}`, textTable(head, rows).replace(/^/gm, '  ')].join('\n'),
    md: [`**${title}**`, '', markdownTable(head, rows), ''].join('\n'),
  };
}

async function main(): Promise<void> {
  const quick = process.env.BENCH_QUICK === '1';
  const only = process.env.BENCH_ONLY?.split(',').map((s) => s.trim());
  const selected = RUNS.filter((r) => !only || only.includes(r));
  const nginx = await nginxVersion();
  const ctx: Ctx = {
    quick,
    cpuProf: process.env.BENCH_CPU_PROF === '1',
    m2mAvailable: existsSync(mainJs),
    nginx,
    rounds: Number(process.env.BENCH_ROUNDS ?? (quick ? 1 : 7)),
    log: (line) => console.log(line),
  };
  const commit = await capture('git', ['-C', repoRoot, 'rev-parse', '--short', 'HEAD']).catch(
    () => 'unknown',
  );
  const meta = {
    date: new Date().toISOString(),
    node: process.version,
    nproc: availableParallelism(),
    cpu: cpuModel(),
    nginx: nginx ?? 'not installed',
    commit,
    quick,
    cpuProf: ctx.cpuProf,
  };
  const machine = `${meta.date.slice(0, 10)} · Node ${meta.node} · ${meta.nproc} × ${meta.cpu} · ${nginx ?? 'no nginx'}`;
  console.log(
    `m2m-proxy bench — ${machine}${quick ? ' · QUICK' : ''}${ctx.cpuProf ? ' · CPU PROFILE' : ''}`,
  );
  if (!ctx.m2mAvailable) {
    console.log(`m2m-proxy: ${mainJs} not found — m2m-proxy targets are skipped (npm run build)`);
  }
  if (!nginx) console.log('nginx: not installed — the nginx baseline is skipped');
  const started = Date.now();
  const tokenEndpoint = await ServerChild.start('token-endpoint');
  const results: Partial<Record<RunName, unknown>> = {};
  const checks: TargetCheck[] = [];
  const errors: string[] = [];
  const mdSections: string[] = [];
  try {
    for (const name of selected) {
      console.log(`\n${TITLES[name]}`);
      const t0 = Date.now();
      try {
        const out = await runners[name](ctx, tokenEndpoint);
        results[name] = out.result;
        checks.push(...out.checks);
        if (name === 'routes' && out.result) console.log(routesTable(out.result as RoutesResult));
        if (name === 'overhead' && out.result) {
          const tables = overheadTables(out.result as OverheadResult);
          console.log(tables.text);
          mdSections.push(tables.md);
        }
        if (name === 'telemetry' && out.result) {
          const tables = telemetryTables(out.result as TelemetryResult);
          console.log(tables.text);
          mdSections.push(tables.md);
        }
      } catch (err) {
        const message = `${name}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`;
        errors.push(message);
        console.log(`  ERROR ${message}`);
        checks.push({ target: `${name} run`, goal: 'completes', measured: 'crashed', pass: false });
      }
      console.log(`  (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
    }
  } finally {
    await tokenEndpoint.stop();
  }

  console.log(`\nTargets — ${machine}`);
  console.log(textTable(CHECK_HEAD, checkRows(checks)));
  const seconds = Math.round((Date.now() - started) / 1000);
  console.log(`\nTotal ${seconds} s.`);

  const profiles = ctx.cpuProf ? summarizeProfiles(started) : undefined;

  const resultsDir = join(repoRoot, 'bench', 'results');
  mkdirSync(resultsDir, { recursive: true });
  // Only a complete, unprofiled run replaces the committed latest.*; anything else is partial.
  const partial = only !== undefined || ctx.cpuProf;
  const base = join(resultsDir, quick ? 'quick' : partial ? 'partial' : 'latest');
  const json = { meta: { ...meta, seconds }, checks, results, errors, profiles };
  writeFileSync(`${base}.json`, `${JSON.stringify(json, null, 2)}\n`);
  const overhead = results.overhead as OverheadResult | undefined;
  if (overhead) {
    const names = Object.keys(overhead.methods.GET ?? overhead.methods.POST ?? {});
    const series: ChartSeries[] = names.map((target) => {
      const get = overhead.methods.GET?.[target];
      const post = overhead.methods.POST?.[target];
      return {
        target,
        ...(get ? { get: { rps: get.rps, p99: get.p99 } } : {}),
        ...(post ? { post: { rps: post.rps, p99: post.p99 } } : {}),
      };
    });
    writeFileSync(`${base}.svg`, chartSvg(series, machine));
  }
  const md = [
    `_${machine} · commit ${commit}${quick ? ' · QUICK run' : ''} · ${seconds} s_`,
    '',
    ...mdSections,
    markdownTable(CHECK_HEAD, checkRows(checks)),
    '',
  ].join('\n');
  writeFileSync(`${base}.md`, md);
  console.log(`Wrote ${base}.json, .md${overhead ? ', .svg' : ''}`);
  if (!quick && !partial) {
    // The docs show exactly these tables (docs/benchmarks.md, between its markers).
    const page = join(repoRoot, 'docs', 'benchmarks.md');
    writeFileSync(page, withResults(readFileSync(page, 'utf8'), md));
    // Biome pads the tables as `npm run lint` expects them.
    spawnSync(join(repoRoot, 'node_modules/.bin/biome'), ['format', '--write', page], {
      stdio: 'ignore',
    });
    console.log(`Wrote the results into ${page}`);
  }

  if (errors.length > 0) process.exitCode = 1;
  if (process.env.BENCH_STRICT === '1' && checks.some((c) => c.pass === false)) {
    process.exitCode = 1;
  }
}

/** Prints and returns a summary of every profile written since the run started. */
function summarizeProfiles(since: number) {
  if (!existsSync(profDir)) return [];
  const files = readdirSync(profDir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => join(profDir, f))
    .filter((f) => statSync(f).mtimeMs >= since)
    .sort((a, b) => statSync(a).mtimeMs - statSync(b).mtimeMs);
  return files.map((file) => {
    const s = summarizeProfile(file, repoRoot);
    console.log(`\nCPU profile ${file} (${(s.totalMs / 1000).toFixed(1)} s sampled)`);
    console.log('  self time by origin (share of busy time):');
    for (const o of s.byOrigin.slice(0, 12)) {
      console.log(`    ${(o.share * 100).toFixed(1).padStart(5)}%  ${o.origin}`);
    }
    console.log('  top functions by self time:');
    for (const f of s.topFunctions) {
      console.log(`    ${(f.share * 100).toFixed(1).padStart(5)}%  ${f.fn}`);
    }
    return { file, ...s };
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
