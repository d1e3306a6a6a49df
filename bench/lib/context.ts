/** What every run receives: the run mode, the availability of the targets, and the log. */

export interface Ctx {
  /** `BENCH_QUICK=1`: shorter runs for a smoke check; figures are indicative only. */
  quick: boolean;
  /** `BENCH_CPU_PROF=1`: m2m-proxy runs with `--cpu-prof` (slower; figures not comparable). */
  cpuProf: boolean;
  /** `dist/m2m-proxy.cjs` exists (`npm run build` has produced the proxy). */
  m2mAvailable: boolean;
  /** The nginx version, or undefined when nginx is not installed. */
  nginx: string | undefined;
  /** Rounds per target in the interleaved runs (`BENCH_ROUNDS`, default 3). */
  rounds: number;
  log(line: string): void;
}

/** A full-run or a quick-run value. */
export function pick<T>(ctx: Ctx, full: T, quick: T): T {
  return ctx.quick ? quick : full;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** One of the benchmark's targets (bench/README.md) with what this run measured. `pass: null` = not measured. */
export interface TargetCheck {
  target: string;
  goal: string;
  measured: string;
  pass: boolean | null;
}

/** Rounds to a few significant digits for tables and JSON. */
export function round(n: number, digits = 2): number {
  if (!Number.isFinite(n)) return n;
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}
