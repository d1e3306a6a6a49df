/**
 * A saturated fleet of real proxy processes on one shared key, with replicas frozen (SIGSTOP,
 * then SIGCONT) at random moments, and the arrival times of its requests taken on the wire
 * (tcpdump on loopback) when the machine allows, else from the upstream's own record. Used by
 * the fleet fault test and by `bench/stalls.ts`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { Redis } from 'ioredis';
import { reserveKeys } from '../../src/pacing/reserve-script.js';
import type { Idp } from './idp.js';
import { type ProxyProcess, type StartProxyOptions, startProxy } from './process.js';
import { gaps, maxInSliding } from './starts.js';
import type { Upstream } from './upstream.js';

const TCPDUMP = '/usr/bin/tcpdump';

/** Packet times (epoch ms) of data-carrying packets towards a port on loopback, from tcpdump. */
export class WireCapture {
  #out = '';

  private constructor(private readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      this.#out += d;
    });
  }

  /** Resolves once tcpdump listens, or to `undefined` when it cannot run here (not root, absent). */
  static async start(port: number): Promise<WireCapture | undefined> {
    if (!existsSync(TCPDUMP)) return undefined;
    // One GET request is one packet with PSH set.
    const filter = `tcp dst port ${port} and (tcp[tcpflags] & tcp-push != 0)`;
    const child = spawn(TCPDUMP, ['-i', 'lo', '-n', '-tt', '-l', '-q', filter], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const listening = await new Promise<boolean>((resolve) => {
      let err = '';
      child.stderr?.on('data', (d: Buffer) => {
        err += d.toString();
        if (err.includes('listening on')) resolve(true);
      });
      child.once('error', () => resolve(false));
      child.once('exit', () => resolve(false));
    });
    if (!listening) {
      child.kill('SIGKILL');
      return undefined;
    }
    return new WireCapture(child);
  }

  async stop(): Promise<number[]> {
    const exited = once(this.child, 'exit');
    this.child.kill('SIGINT');
    await exited;
    const times: number[] = [];
    for (const line of this.#out.split('\n')) {
      const t = Number(line.split(' ', 1)[0]);
      if (line.includes(' > ') && Number.isFinite(t)) times.push(t * 1000);
    }
    return times.sort((a, b) => a - b);
  }
}

/** The clients, in their own process so that opening connections does not delay the upstream. */
const CLIENTS = `
const urls = JSON.parse(process.argv[1]);
const timeoutMs = Number(process.argv[2]);
const statuses = await Promise.all(urls.map(async (url) => {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return 0;
  }
}));
process.stdout.write(JSON.stringify(statuses));
`;

/**
 * GETs every URL at once from a separate process (each given up after `timeoutMs`); their
 * statuses in order, 0 for a request that failed.
 */
export async function burst(urls: string[], timeoutMs: number): Promise<number[]> {
  const child = spawn(
    process.execPath,
    ['--input-type=module', '-e', CLIENTS, JSON.stringify(urls), String(timeoutMs)],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk;
  });
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`the clients' process exited with ${code}`);
  return JSON.parse(out) as number[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `condition` every 25 ms until it holds; throws after `ms`. */
export async function until(condition: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await sleep(25);
  }
}

/** A small seeded generator (mulberry32), so a failing run can be repeated with its seed. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface StalledFleetOptions {
  idp: Idp;
  api: Upstream;
  redisUrl: string;
  redisPassword?: string;
  /** `rateLimit.shared.passwordFile`, when Redis has a password. */
  passwordFile?: string;
  authorizationFile: string;
  makeConfig: (
    overrides: Record<string, Record<string, unknown>>,
  ) => Promise<Record<string, Record<string, unknown>>>;
  key: string;
  replicas: number;
  perReplica: number;
  perSecond: number;
  /** Each freeze lasts this long ... */
  freezeMs: number;
  /** ... and one starts in every period of this length, at a random moment of it. */
  everyMs: number;
  seed: number;
}

export interface StalledFleetResult {
  measuredAt: 'wire' | 'upstream handler';
  /** The arrival times measured (ms, ascending). */
  times: number[];
  starts: number;
  statuses: number[];
  maxInAnySecond: number;
  minGapMs: number;
  gapsBelow150: number;
  /** Achieved rate over the run ÷ perSecond: (starts − 1) / span. */
  achievedShare: number;
  freezes: number;
  /** Slots given up by the replicas (sum of `m2m_proxy_shared_budget_forfeits_total`). */
  forfeits: number;
  /** Forfeited slots given back to the fleet (`shared_slot_reclaimed` lines). */
  reclaimed: number;
  /** The replicas' `shared_slot_forfeited` log lines (lateness, clock doubt). */
  forfeitLines: Record<string, unknown>[];
  /** Every replica's output, for the secret scan. */
  proxies: ProxyProcess[];
  /** Runs of the reservation script during the load (every ask, granted or not) ÷ requests. */
  asksPerRequest: number;
  /**
   * `shared_budget_down` lines during the load: a replica that paced alone while the others used
   * Redis (its starts are not in the fleet's record).
   */
  switchesToLocal: number;
  /**
   * The densest sliding second by the upstream's record: each arrival as `+ms@replica`, from the
   * first of that second (to explain a run over the limit).
   */
  densest: string;
}

/** Every run of the reservation script is one observation of its round trip. */
const RESERVE_CALLS = 'm2m_proxy_shared_budget_reserve_duration_seconds_count';

/** The sliding second holding the most records, as `+ms@replica` from its first. */
function densestSecond(records: readonly { at: number; replica: string }[]): string {
  let best = { from: 0, to: 0 };
  let lo = 0;
  for (let hi = 0; hi < records.length; hi++) {
    while ((records[hi]?.at ?? 0) - (records[lo]?.at ?? 0) >= 1000) lo++;
    if (hi - lo > best.to - best.from) best = { from: lo, to: hi };
  }
  const first = records[best.from]?.at ?? 0;
  return records
    .slice(best.from, best.to + 1)
    .map((r) => `+${(r.at - first).toFixed(1)}@${r.replica}`)
    .join(' ');
}

async function metricSum(proxy: ProxyProcess, name: string): Promise<number> {
  const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
  // Every series of the metric (one per route), summed; NaN when it has none.
  const values = [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))];
  return values.length > 0 ? values.reduce((sum, m) => sum + Number(m[1]), 0) : Number.NaN;
}

/**
 * `startProxy` with a configuration from `make`, made again once when its ports were taken
 * meanwhile: a free port is only known free until another test's process binds it.
 */
async function startWithFreshPorts(make: () => Promise<StartProxyOptions>): Promise<ProxyProcess> {
  try {
    return await startProxy(await make());
  } catch (err) {
    if (!(err instanceof Error && err.message.includes('is already in use'))) throw err;
    return startProxy(await make());
  }
}

/**
 * Starts the fleet, warms it up, empties the budget, saturates it (`perReplica` requests per
 * replica at once) while freezing a randomly chosen replica for `freezeMs` at a random moment of
 * every `everyMs`, and measures the arrivals. Stops the replicas before returning.
 */
export async function runStalledFleet(o: StalledFleetOptions): Promise<StalledFleetResult> {
  const rand = random(o.seed);
  const shared: Record<string, unknown> = { redis: o.redisUrl, key: o.key };
  if (o.passwordFile) shared.passwordFile = o.passwordFile;
  const fleet = await Promise.all(
    Array.from({ length: o.replicas }, async () =>
      startWithFreshPorts(async () => ({
        // Several node processes starting at once on a busy 2-core host.
        readyTimeoutMs: 30_000,
        config: await o.makeConfig({
          // Debug: the forfeited and reclaimed slots are logged at debug level.
          log: { level: 'debug' },
          rateLimit: {
            perSecond: o.perSecond,
            burst: 1,
            window: { max: 0 },
            queue: { max: 1000, timeout: '60s' },
            shared,
          },
        }),
      })),
    ),
  );
  try {
    await Promise.all(
      fleet.map(async (proxy) => {
        await until(async () => (await fetch(`${proxy.adminUrl}/readyz`)).status === 200, 10_000);
        await until(
          async () => (await metricSum(proxy, 'm2m_proxy_shared_budget_up')) === 1,
          10_000,
        );
        const warm = await fetch(`${proxy.url}/warm-up`);
        await warm.arrayBuffer();
      }),
    );
    const admin = new Redis(o.redisUrl, o.redisPassword ? { password: o.redisPassword } : {});
    try {
      await admin.del(...reserveKeys(o.key));
    } finally {
      admin.disconnect();
    }
    await sleep(300);
    const tag = `stall-${o.seed}-${Date.now()}`;
    const urls = fleet.flatMap((proxy, r) =>
      Array.from({ length: o.perReplica }, (_, i) => `${proxy.url}/${tag}/${r}/${i}`),
    );
    const asksBefore = await Promise.all(fleet.map((p) => metricSum(p, RESERVE_CALLS)));
    // Log lines from here on belong to the measured load (a replica may have switched at start-up).
    const logsBefore = fleet.map((p) => p.logs.length);
    const wire = await WireCapture.start(o.api.port);
    const recordedFrom = o.api.requests.length;
    const load = burst(urls, 60_000);
    let done = false;
    let freezes = 0;
    const freezer = (async () => {
      // Let the queues fill first; then one freeze in every period, at a random moment of it.
      await sleep(300);
      while (!done && o.freezeMs > 0) {
        const period = performance.now();
        await sleep(rand() * (o.everyMs - o.freezeMs));
        if (done) break;
        const victim = fleet[Math.floor(rand() * fleet.length)] as ProxyProcess;
        process.kill(victim.pid, 'SIGSTOP');
        freezes++;
        try {
          await sleep(o.freezeMs);
        } finally {
          process.kill(victim.pid, 'SIGCONT');
        }
        await sleep(Math.max(0, o.everyMs - (performance.now() - period)));
      }
    })();
    let statuses: number[];
    try {
      statuses = await load;
    } finally {
      done = true;
      await freezer;
    }
    const records = o.api.requests
      .slice(recordedFrom)
      .filter((r) => r.path.includes(`/${tag}/`))
      .map((r) => ({ at: r.at, replica: r.path.split('/').at(-2) ?? '?' }))
      .sort((a, b) => a.at - b.at);
    const handler = records.map((r) => r.at);
    const packets = await wire?.stop();
    // One packet per request the upstream saw: the wire's record; otherwise the handler's.
    const onWire = packets !== undefined && packets.length === handler.length;
    if (packets !== undefined && !onWire) {
      console.warn(
        `tcpdump saw ${packets.length} packets for ${handler.length} requests: not used`,
      );
    }
    const times = onWire ? packets : handler;
    const g = gaps(times);
    const span = (times.at(-1) ?? 0) - (times[0] ?? 0);
    const asksAfter = await Promise.all(fleet.map((p) => metricSum(p, RESERVE_CALLS)));
    const asks = asksAfter.reduce((sum, n, i) => sum + n - (asksBefore[i] ?? 0), 0);
    const forfeits = (
      await Promise.all(fleet.map((p) => metricSum(p, 'm2m_proxy_shared_budget_forfeits_total')))
    ).reduce((a, b) => a + b, 0);
    return {
      measuredAt: onWire ? 'wire' : 'upstream handler',
      times,
      starts: times.length,
      statuses,
      maxInAnySecond: maxInSliding(times, 1000),
      minGapMs: Math.min(...g),
      gapsBelow150: g.filter((x) => x < 150).length,
      achievedShare: span > 0 ? (times.length - 1) / (span / 1000) / o.perSecond : 0,
      freezes,
      forfeits,
      reclaimed: fleet.reduce(
        (sum, p) => sum + p.logs.filter((l) => l.event === 'shared_slot_reclaimed').length,
        0,
      ),
      forfeitLines: fleet.flatMap((p) => p.logs.filter((l) => l.event === 'shared_slot_forfeited')),
      proxies: fleet,
      asksPerRequest: asks / Math.max(1, handler.length),
      switchesToLocal: fleet.reduce(
        (sum, p, i) =>
          sum + p.logs.slice(logsBefore[i]).filter((l) => l.event === 'shared_budget_down').length,
        0,
      ),
      densest: densestSecond(records),
    };
  } finally {
    for (const proxy of fleet) {
      try {
        process.kill(proxy.pid, 'SIGCONT');
      } catch {
        // already gone
      }
      proxy.kill();
    }
    await Promise.all(fleet.map((p) => p.exited));
  }
}
