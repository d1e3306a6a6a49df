/**
 * The fleet with stalls: `replicas` real m2m-proxy processes on one key in a real redis-server,
 * all saturated (`perReplica` requests each at once), one of them frozen (SIGSTOP/SIGCONT) for
 * `freezeMs` at a random moment of every `everyMs`. Prints, per run: the most starts in any
 * sliding second, the smallest gap, gaps under 150 ms and the achieved share of the budget, on
 * the wire (tcpdump, as root) or from the upstream's record when tcpdump cannot run.
 *
 *   npm run build && npx tsx bench/stalls.ts [replicas=6] [runs=10] [perReplica=20] [freezeMs=150] [everyMs=700]
 */
import { randomUUID } from 'node:crypto';
import { loadavg } from 'node:os';
import { makeSecretClient, startIdp } from '../fixtures/idp.js';
import { tempDir } from '../fixtures/process.js';
import { startRedis } from '../fixtures/redis.js';
import { runStalledFleet } from '../fixtures/stalls.js';
import { startUpstream } from '../fixtures/upstream.js';
import { CLIENT_ID, CLIENT_SECRET, proxyConfig } from '../test/integration/world.js';

const [replicas = 6, runs = 10, perReplica = 20, freezeMs = 150, everyMs = 700] = process.argv
  .slice(2)
  .map(Number);
const perSecond = 6;

const redis = await startRedis();
const idp = await startIdp({
  clients: [makeSecretClient(CLIENT_ID, CLIENT_SECRET, 'client_secret_basic')],
  accessTokenTTL: 3600,
});
const api = await startUpstream({
  issuer: idp.issuer,
  audience: idp.audience,
  basePath: '/api/v1',
});
const dir = await tempDir('m2m-stalls-');
const basic = Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64');
const authorizationFile = await dir.write('authorization', `Basic ${basic}\n`);
console.log(
  `${replicas} replicas × ${perReplica} requests, perSecond ${perSecond}, burst 1; a replica frozen ${freezeMs} ms every ${everyMs} ms; load average ${loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')}`,
);
console.log(
  '| run | measured at | max per sliding second | smallest gap | gaps < 150 ms | achieved | freezes | forfeits (given back) | Redis asks per request | switches to local | load (1 min) |',
);
console.log('|---|---|---|---|---|---|---|---|---|---|---|');
const asks: number[] = [];
let ok = 0;
try {
  for (let run = 1; run <= runs; run++) {
    // A replica that cannot start (a port taken meanwhile by another process on a shared host)
    // fails the run before any measurement: start it again, once.
    const attempt = () =>
      runStalledFleet({
        idp,
        api,
        redisUrl: redis.url,
        authorizationFile,
        makeConfig: (o) => proxyConfig(idp, api, 'client_secret_basic', { authorizationFile }, o),
        key: `stalls:${randomUUID()}`,
        replicas,
        perReplica,
        perSecond,
        freezeMs,
        everyMs,
        seed: run * 7919 + replicas,
      });
    const r = await attempt().catch((error: unknown) => {
      console.log(`(run ${run}: ${String(error).split('\n')[0]}; started again)`);
      return attempt();
    });
    const failed = r.statuses.filter((s) => s !== 200).length;
    if (r.maxInAnySecond <= perSecond && r.achievedShare >= 0.95 && failed === 0) ok++;
    console.log(
      `| ${run} | ${r.measuredAt} | ${r.maxInAnySecond} | ${r.minGapMs.toFixed(1)} ms | ${r.gapsBelow150} | ${(r.achievedShare * 100).toFixed(1)} %${failed ? ` (${failed} failed)` : ''} | ${r.freezes} | ${r.forfeits} (${r.reclaimed}) | ${r.asksPerRequest.toFixed(2)} | ${r.switchesToLocal} | ${loadavg()[0]?.toFixed(1)} |`,
    );
    asks.push(r.asksPerRequest);
    // A run over the limit: which replicas sent the densest second (upstream's record).
    if (r.maxInAnySecond > perSecond) console.log(`  densest second: ${r.densest}`);
    if (process.env.STALLS_VERBOSE) {
      console.log(r.forfeitLines.map((l) => JSON.stringify(l)).join('\n'));
    }
    api.reset();
  }
} finally {
  await Promise.all([api.close(), idp.close(), redis.stop()]);
  await dir.remove();
}
const meanAsks = asks.reduce((a, b) => a + b, 0) / Math.max(1, asks.length);
console.log(
  `Redis: ${meanAsks.toFixed(2)} reservation asks per request on average, ≈ ${(meanAsks * perSecond).toFixed(0)} script runs/s at ${perSecond}/s (plus one heartbeat per replica every 2 s)`,
);
console.log(
  `${ok} of ${runs} runs within ≤ ${perSecond} per sliding second and ≥ 95 % of the budget`,
);
