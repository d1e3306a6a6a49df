/**
 * autocannon, in the bench's own process, with latencies kept at full resolution: autocannon's
 * histogram stores whole milliseconds, too coarse for "p99 added ≤ 2 ms", so every response
 * time (a float from `process.hrtime`) is also collected here.
 */
import { performance } from 'node:perf_hooks';
import autocannon from 'autocannon';
import { quantileSorted } from './stats.js';

export interface LoadOptions {
  url: string;
  connections: number;
  /** Seconds; ignored when `amount` is set. */
  duration?: number;
  amount?: number;
  method?: 'GET' | 'POST';
  body?: Buffer;
  overallRate?: number;
  /** Seconds before a request counts as timed out (autocannon's default is 10). */
  timeout?: number;
  /** Also return when each 2xx response ended (epoch ms, comparable across processes). */
  timeline?: boolean;
}

export interface LoadResult {
  /** 2xx responses per second. */
  rps: number;
  /** Latencies of 2xx responses, ms. */
  p50: number;
  p99: number;
  max: number;
  ok: number;
  /** Socket errors, timeouts and non-2xx responses. */
  errors: number;
  non2xx: number;
  timeouts: number;
  seconds: number;
  statusCodes: Record<string, number>;
  /** With `timeline`: end time (epoch ms) and latency (ms) of every 2xx response, in order. */
  timeline?: { ends: number[]; latencies: number[] };
}

export function load(opts: LoadOptions): Promise<LoadResult> {
  const samples: number[] = [];
  const ends: number[] = [];
  const origin = performance.timeOrigin;
  return new Promise((resolve, reject) => {
    const instance = autocannon(
      {
        url: opts.url,
        connections: opts.connections,
        ...(opts.amount !== undefined ? { amount: opts.amount } : { duration: opts.duration ?? 5 }),
        method: opts.method ?? 'GET',
        ...(opts.body
          ? {
              body: opts.body,
              headers: { 'content-type': 'application/octet-stream' },
            }
          : {}),
        ...(opts.overallRate ? { overallRate: opts.overallRate } : {}),
        timeout: opts.timeout ?? 10,
      },
      (err, result) => {
        if (err) {
          reject(err);
          return;
        }
        const sorted = Float64Array.from(samples).sort();
        const statusCodes: Record<string, number> = {};
        for (const [code, { count }] of Object.entries(result.statusCodeStats)) {
          statusCodes[code] = count;
        }
        resolve({
          rps: samples.length / result.duration,
          p50: quantileSorted(sorted, 0.5),
          p99: quantileSorted(sorted, 0.99),
          max: sorted.at(-1) ?? Number.NaN,
          ok: samples.length,
          errors: result.errors + result.non2xx,
          non2xx: result.non2xx,
          timeouts: result.timeouts,
          seconds: result.duration,
          statusCodes,
          ...(opts.timeline ? { timeline: { ends, latencies: samples } } : {}),
        });
      },
    );
    instance.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
      if (status < 200 || status >= 300) return;
      samples.push(ms);
      if (opts.timeline) ends.push(origin + performance.now());
    });
  });
}
