/**
 * Run 4, pacing accuracy, from the upstream's point of view (its arrival times):
 * (a) perSecond 6, burst 1 under a 50-connection autocannon burst: achieved rate, the most
 *     starts in any sliding second, the smallest gap, and the queue wait;
 * (b) a scaled window (200 per 30 s; pacing fast) under the same burst: the most starts in any
 *     sliding window must be exactly the cap, and the window must reopen (about 2 × cap sent).
 * Both run at once (they are light) on separate upstreams and proxies.
 */
import { captureWire, type MeasuredAt, preferWire } from '../lib/capture.js';
import { type Ctx, pick, round, type TargetCheck } from '../lib/context.js';
import { load } from '../lib/load.js';
import { M2mProxy } from '../lib/m2m.js';
import { ServerChild } from '../lib/processes.js';
import {
  achievedRate,
  histogramQuantile,
  maxInWindow,
  type SecondStats,
  secondStats,
} from '../lib/stats.js';

export interface PacingResult {
  rate: {
    perSecond: number;
    burst: number;
    connections: number;
    seconds: number;
    starts: number;
    achievedPerSecond: number;
    achievedShare: number;
    /** From the packets on the wire (tcpdump) when available, else from the upstream's handler. */
    measuredAt: MeasuredAt;
    maxInAnySecond: number;
    minGapMs: number;
    /** The upstream handler's own record, for comparison (it adds its scheduling delays). */
    handler: SecondStats;
    queueWaitP99S: number | undefined;
    clientLatencyP99S: number;
    expectedWaitS: number;
  };
  window: {
    max: number;
    lengthS: number;
    seconds: number;
    starts: number;
    maxInAnyWindow: number;
    reopenedAfterS: number | undefined;
  };
}

const CONNECTIONS = 50;

export async function runPacing(
  ctx: Ctx,
  tokenEndpoint: ServerChild,
): Promise<{ result?: PacingResult; checks: TargetCheck[] }> {
  const absent = 'not measured (m2m-proxy absent)';
  const checks: TargetCheck[] = [
    {
      target: 'starts in any sliding second',
      goal: '≤ perSecond (6)',
      measured: absent,
      pass: null,
    },
    { target: 'achieved rate', goal: '≥ 98% of perSecond', measured: absent, pass: null },
    { target: 'starts in any sliding window', goal: '= window.max', measured: absent, pass: null },
  ];
  if (!ctx.m2mAvailable) return { checks };
  await tokenEndpoint.call('reset', { expiresIn: 3600, delayMs: 0 });

  const perSecond = 6;
  const rateSeconds = pick(ctx, 60, 10);
  const windowMax = pick(ctx, 200, 50);
  const windowS = pick(ctx, 30, 5);
  const windowRunS = pick(ctx, 45, 8);
  const queue = { max: 100_000, timeout: '600s' };

  const [upA, upB] = await Promise.all([
    ServerChild.start('upstream'),
    ServerChild.start('upstream'),
  ]);
  const tokenUrl = `${tokenEndpoint.url}/token`;
  const [rateProxy, windowProxy] = await Promise.all([
    M2mProxy.start({
      upstreamUrl: upA.url,
      tokenUrl,
      rateLimit: { perSecond, burst: 1, window: { max: 0 }, queue },
    }),
    M2mProxy.start({
      upstreamUrl: upB.url,
      tokenUrl,
      rateLimit: {
        perSecond: 1000,
        burst: 1,
        window: { max: windowMax, length: `${windowS}s` },
        queue,
      },
    }),
  ]);
  try {
    // An idle proxy holds a full bucket (burst 1): the first start is free, the rest are paced.
    const wire = await captureWire(upA.port);
    await Promise.all([upA.call('startRecording'), upB.call('startRecording')]);
    const [rateLoad] = await Promise.all([
      load({
        url: `${rateProxy.url}/paced`,
        connections: CONNECTIONS,
        duration: rateSeconds,
        timeout: 600,
      }),
      load({
        url: `${windowProxy.url}/windowed`,
        connections: CONNECTIONS,
        duration: windowRunS,
        timeout: 600,
      }),
    ]);
    const a = (await upA.call<number[]>('stopRecording')).sort((x, y) => x - y);
    const b = (await upB.call<number[]>('stopRecording')).sort((x, y) => x - y);
    const { times: seen, measuredAt } = preferWire(await wire?.stop(), a, ctx.log);
    const metrics = await rateProxy.metrics();

    const achieved = achievedRate(a);
    const firstOfSecondBatch = b[windowMax];
    const result: PacingResult = {
      rate: {
        perSecond,
        burst: 1,
        connections: CONNECTIONS,
        seconds: rateSeconds,
        starts: a.length,
        achievedPerSecond: round(achieved, 3),
        achievedShare: round(achieved / perSecond, 4),
        measuredAt,
        ...secondStats(seen),
        handler: secondStats(a),
        queueWaitP99S: (() => {
          const q = histogramQuantile(metrics, 'm2m_proxy_queue_wait_seconds', 0.99);
          return q === undefined ? undefined : round(q, 3);
        })(),
        clientLatencyP99S: round(rateLoad.p99 / 1000, 3),
        expectedWaitS: round(CONNECTIONS / perSecond, 2),
      },
      window: {
        max: windowMax,
        lengthS: windowS,
        seconds: windowRunS,
        starts: b.length,
        maxInAnyWindow: maxInWindow(b, windowS * 1000),
        reopenedAfterS:
          firstOfSecondBatch === undefined
            ? undefined
            : round((firstOfSecondBatch - (b[0] ?? 0)) / 1000, 3),
      },
    };
    const r = result.rate;
    const w = result.window;
    ctx.log(
      `  rate: ${r.starts} starts in ${rateSeconds} s → ${r.achievedPerSecond}/s (${(r.achievedShare * 100).toFixed(1)}%), max ${r.maxInAnySecond} in any second, min gap ${r.minGapMs} ms on the ${r.measuredAt} (handler: max ${r.handler.maxInAnySecond}, min gap ${r.handler.minGapMs} ms), queue wait p99 ${r.queueWaitP99S ?? 'n/a'} s (client p99 ${r.clientLatencyP99S} s, expected ≈ ${r.expectedWaitS} s)`,
    );
    ctx.log(
      `  window: ${w.starts} starts in ${windowRunS} s, max ${w.maxInAnyWindow} in any ${windowS} s (cap ${windowMax}), reopened after ${w.reopenedAfterS ?? 'n/a'} s`,
    );
    const [perSecondCheck, achievedCheck, windowCheck] = checks as [
      TargetCheck,
      TargetCheck,
      TargetCheck,
    ];
    perSecondCheck.measured = `${r.maxInAnySecond} on the ${r.measuredAt} (min gap ${r.minGapMs} ms, ${r.starts} starts in ${rateSeconds} s; upstream handler: ${r.handler.maxInAnySecond}, min gap ${r.handler.minGapMs} ms)`;
    perSecondCheck.pass = r.maxInAnySecond <= perSecond;
    achievedCheck.measured = `${r.achievedPerSecond}/s = ${(r.achievedShare * 100).toFixed(1)}%`;
    achievedCheck.pass = r.achievedShare >= 0.98;
    windowCheck.measured = `${w.maxInAnyWindow} of ${windowMax} per ${windowS} s (${w.starts} starts, reopened after ${w.reopenedAfterS ?? 'n/a'} s)`;
    windowCheck.pass = w.maxInAnyWindow === windowMax && w.starts > windowMax;
    return { result, checks };
  } finally {
    await Promise.all([rateProxy.stop(), windowProxy.stop()]);
    await Promise.all([upA.stop(), upB.stop()]);
  }
}
