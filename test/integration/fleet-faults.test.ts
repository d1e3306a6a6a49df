import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WireCapture } from '../../fixtures/capture.js';
import { type ProxyProcess, startProxy } from '../../fixtures/process.js';
import { runStalledFleet } from '../../fixtures/stalls.js';
import { maxInSliding, ratePerSecond } from '../../fixtures/starts.js';
import { type FleetWorld, startFleetWorld } from './world.js';

// Faults of a real fleet: real proxy processes frozen with SIGSTOP at random moments while the
// fleet is saturated, and a Redis killed under N replicas. Arrivals are taken on the wire
// (tcpdump on loopback, as root; `.ci/run` installs it) when the machine allows, else from the
// upstream's record, which adds the upstream's own scheduling delays: then, as in
// fleet.test.ts, a sliding second is counted over 50 ms less.
const HANDLER_JITTER_MS = 50;

let world: FleetWorld;
beforeAll(async () => {
  world = await startFleetWorld('m2m-fleet-faults-');
});
afterAll(() => world?.close());

async function metric(proxy: ProxyProcess, name: string): Promise<number> {
  const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
  const match = new RegExp(`^${name}\\{route="default"\\} (\\S+)$`, 'm').exec(text);
  return match ? Number(match[1]) : Number.NaN;
}

async function until(condition: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('a fleet of real proxy processes under faults', () => {
  it('six saturated replicas, one frozen 150 ms at a random moment of every 1.5 s: never more than perSecond in any sliding second, ≥ 95 % of the budget used or forfeited', async () => {
    const seed = Date.now() % 100_000;
    const perSecond = 6;
    const r = await runStalledFleet({
      idp: world.idp,
      api: world.api,
      redisUrl: world.redis.url,
      redisPassword: world.redisPassword,
      passwordFile: world.passwordFile,
      authorizationFile: world.authorizationFile,
      makeConfig: world.config,
      key: `faults:stall:${randomUUID()}`,
      replicas: 6,
      perReplica: 15,
      perSecond,
      freezeMs: 150,
      everyMs: 1500,
      seed,
    });
    world.proxies.push(...r.proxies);
    const summary = `seed ${seed}, on the ${r.measuredAt}: max ${r.maxInAnySecond} per sliding second, min gap ${r.minGapMs.toFixed(1)} ms, ${(r.achievedShare * 100).toFixed(1)} % of the budget, ${r.freezes} freezes, ${r.forfeits} slots forfeited, ${r.reclaimed} given back`;
    console.info(`stalled fleet: ${summary}`);
    expect(r.statuses, summary).toEqual(Array(90).fill(200));
    expect(r.starts).toBe(90);
    // The freezes really happened while the fleet was saturated (about one per 1.5 s of ~15 s).
    expect(r.freezes).toBeGreaterThanOrEqual(6);
    const second = r.measuredAt === 'wire' ? 1000 : 1000 - HANDLER_JITTER_MS;
    expect(maxInSliding(r.times, second), summary).toBeLessThanOrEqual(perSecond);
    // The budget: every slot of the run was either used or lost to a stalled replica (a forfeit
    // that was not given back is the price of the guarantee: the slot cannot be used late).
    // Nothing else is lost. (On a host this busy, stalls from the load itself make forfeits that
    // a quiet host does not; the share actually used is reported above.)
    const spanS = ((r.times.at(-1) ?? 0) - (r.times[0] ?? 0)) / 1000;
    const lost = r.forfeits - r.reclaimed;
    const usedOrForfeited = (r.starts - 1 + lost) / spanS / perSecond;
    expect(usedOrForfeited, summary).toBeGreaterThanOrEqual(0.95);
    expect(r.achievedShare, summary).toBeGreaterThanOrEqual(0.8);
  }, 120_000);

  it('three replicas that lose Redis (killed) together stay within the budget, each at a third of it', async () => {
    const key = `faults:redis-down:${randomUUID()}`;
    const perSecond = 6;
    const fleet = await Promise.all(
      [0, 1, 2].map(async () =>
        startProxy({
          readyTimeoutMs: 30_000,
          config: await world.config({
            log: { level: 'info' },
            rateLimit: {
              perSecond,
              burst: 1,
              window: { max: 0 },
              queue: { max: 1000, timeout: '60s' },
              // No `fallback`: each takes 1 / the replicas it last saw on the key.
              shared: { redis: world.redis.url, passwordFile: world.passwordFile, key },
            },
          }),
        }),
      ),
    );
    world.proxies.push(...fleet);
    // Each has announced itself and seen the others (early heartbeats are 200 ms apart).
    await Promise.all(
      fleet.map((p) =>
        until(async () => (await metric(p, 'm2m_proxy_shared_budget_replicas')) === 3, 10_000),
      ),
    );
    for (const p of fleet) {
      expect(await metric(p, 'm2m_proxy_shared_budget_fallback_share')).toBeCloseTo(1 / 3);
    }
    const tag = `down-${randomUUID()}`;
    const wire = await WireCapture.start(world.api.port);
    const from = world.api.requests.length;
    const load = Promise.all(
      fleet.flatMap((p, r) =>
        Array.from({ length: 16 }, (_, i) =>
          fetch(`${p.url}/${tag}/${r}/${i}`, { signal: AbortSignal.timeout(60_000) }).then(
            async (res) => {
              await res.arrayBuffer();
              return res.status;
            },
            () => 0,
          ),
        ),
      ),
    );
    load.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 2000));
    // (A replica slow to connect at start-up on a busy host may have switched once already.)
    const before = fleet.map((p) => p.logs.length);
    const downLine = (p: ProxyProcess, i: number) =>
      p.logs.slice(before[i]).find((l) => l.event === 'shared_budget_down');
    process.kill(world.redis.pid, 'SIGKILL');
    const killedAt = performance.now();
    try {
      await Promise.all(fleet.map((p, i) => until(async () => downLine(p, i) !== undefined, 5000)));
      const statuses = await load;
      expect(statuses).toEqual(Array(48).fill(200));
    } finally {
      await world.redis.restart();
    }
    for (const [i, p] of fleet.entries()) {
      const down = downLine(p, i);
      expect(down, JSON.stringify(down)).toMatchObject({ replicas: 3 });
      expect(down?.share).toBeCloseTo(1 / 3);
    }
    const handler = world.api.requests
      .slice(from)
      .filter((r) => r.path.includes(`/${tag}/`))
      .map((r) => r.at)
      .sort((a, b) => a - b);
    const packets = await wire?.stop();
    const onWire = packets !== undefined && packets.length === handler.length;
    const times = onWire ? packets : handler;
    const second = onWire ? 1000 : 1000 - HANDLER_JITTER_MS;
    // The whole run, before, across and after the switch: the fleet within the budget.
    const most = maxInSliding(times, second);
    // While down (from a second after the kill, when the replicas pace alone): 3 × 2/s. The
    // fleet's rate is the sum of the replicas' own rates: their schedules are independent, so
    // (starts − 1) / span over the merged record would count up to two extra intervals' worth
    // of starts at the edges and read above the sum.
    const downFrom = killedAt + 1200;
    const downTimes = handler.filter((t) => t > downFrom);
    /** Replica `r`'s arrivals at the upstream handler (its requests carry `/<tag>/<r>/`). */
    const arrivalsOf = (r: number) =>
      world.api.requests
        .slice(from)
        .filter((q) => q.path.includes(`/${tag}/${r}/`))
        .map((q) => q.at)
        .sort((a, b) => a - b);
    const downRate = [0, 1, 2].reduce(
      (sum, r) => sum + ratePerSecond(arrivalsOf(r).filter((t) => t > downFrom)),
      0,
    );
    console.info(
      `redis killed under 3 replicas, on the ${onWire ? 'wire' : 'upstream handler'}: max ${most} per sliding second; ${downTimes.length} starts at ${downRate.toFixed(2)}/s while down`,
    );
    if (most > perSecond) {
      const since = (times: number[]) => times.map((t) => (t - killedAt).toFixed(0)).join(' ');
      console.info(
        `arrivals after the kill (ms; handler): ${since(handler)}; per replica: ${[0, 1, 2]
          .map((r) => since(arrivalsOf(r)))
          .join(' | ')}`,
      );
    }
    expect(most).toBeLessThanOrEqual(perSecond);
    expect(downTimes.length).toBeGreaterThanOrEqual(10);
    expect(downRate).toBeLessThanOrEqual(perSecond);
    // Each at its third of the budget, not far below it (the fleet keeps working).
    expect(downRate).toBeGreaterThanOrEqual(0.8 * perSecond);
  }, 120_000);
});
