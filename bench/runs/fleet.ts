/**
 * Run 6 (HOOK, not implemented yet), the fleet run of issue 7, point 6: three m2m-proxy
 * replicas sharing one `rateLimit.shared.key` on a real `redis-server`, all bursting at once.
 *
 * TODO(issue 7, point 6): once `rateLimit.shared` lands in src/:
 *   1. start `redis-server --port <free> --save "" --appendonly no` (skip with a clear line when
 *      the binary is absent, as nginx is skipped), stop it by PID;
 *   2. start three M2mProxy instances with the same `rateLimit.shared` ({ redis, key }) and
 *      perSecond 6 / burst 1, all pointing at ONE upstream that records arrival times;
 *   3. load all three at once (e.g. 3 × 20 connections, 60 s; QUICK 10 s);
 *   4. report the achieved fleet rate (target ≥ 95% of perSecond), the most starts in any
 *      sliding second for the fleet (≤ perSecond), and the Redis round-trip p99 added per
 *      request (from the reservation-latency histogram of issue 7 point 3, or client latency
 *      at a non-limiting rate with and without `shared`);
 *   5. return TargetChecks for those three, like runPacing does.
 */
import type { Ctx, TargetCheck } from '../lib/context.js';

export interface FleetResult {
  skipped: string;
}

export async function runFleet(_ctx: Ctx): Promise<{ result: FleetResult; checks: TargetCheck[] }> {
  const skipped = 'not implemented yet (issue 7, point 6: shared budget through Redis)';
  return {
    result: { skipped },
    checks: [
      {
        target: 'fleet: starts in any sliding second (3 replicas, one key)',
        goal: '≤ perSecond; fleet rate ≥ 95%',
        measured: skipped,
        pass: null,
      },
    ],
  };
}
