import { Registry } from 'prom-client';
import { describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import { SharedBudgetMetrics } from '../../../src/metrics/metrics.js';
import { FallbackSlotStore } from '../../../src/pacing/fallback-slot-store.js';
import { LocalSlotStore } from '../../../src/pacing/local-slot-store.js';
import type { SharedSlotStore } from '../../../src/pacing/redis-slot-store.js';
import { type Grant, PROBE_MAX_DELAY_MS, type Reservation } from '../../../src/pacing/types.js';
import { logSink } from '../../support/log-sink.js';
import { flush, useFakeTimeFromT0 } from './helpers.js';

useFakeTimeFromT0();

/**
 * The fleet's store as the fallback sees it: grants at once with a handle each while up, judges
 * a start by the handle it is given (late by more than 25 ms: forfeited), and fails once lost.
 */
class FakeShared implements SharedSlotStore {
  up = true;
  readonly issued: Grant[] = [];
  readonly judged: Grant[] = [];
  readonly #lost: Array<(error: Error) => void> = [];

  async reserve(): Promise<Reservation> {
    if (!this.up) throw new Error('down');
    const grant = { n: this.issued.length };
    this.issued.push(grant);
    return { granted: true, delayMs: 0, grant };
  }

  mayStart(grant: Grant, lateMs: number): boolean {
    this.judged.push(grant);
    return lateMs <= 25;
  }

  async ping(): Promise<void> {
    if (!this.up) throw new Error('down');
  }

  onConnectionLost(listener: (error: Error) => void): void {
    this.#lost.push(listener);
  }

  lose(): void {
    this.up = false;
    for (const listener of this.#lost) listener(new Error('connection lost'));
  }

  async heartbeat(): Promise<number> {
    if (!this.up) throw new Error('down');
    return 2;
  }

  async close(): Promise<void> {}
}

describe('FallbackSlotStore: grants across a switch', () => {
  it('judges and corrects each start by the side and the grant that made it, not by the latest', async () => {
    const shared = new FakeShared();
    const store = new FallbackSlotStore({
      shared,
      localFor: (share) =>
        new LocalSlotStore({
          perSecond: 10 * share,
          burst: 1,
          windowMax: 0,
          windowMs: 1000,
          clock: systemClock,
        }),
      clock: systemClock,
      logger: logSink('info').logger,
      metrics: new SharedBudgetMetrics(new Registry()),
      key: 'k',
    });
    try {
      await flush();
      const fromRedis = await store.reserve(10_000, 0);
      shared.lose();
      // Local pacing from now on, after the hold that follows the switch.
      const pending = store.reserve(10_000, 0);
      await vi.advanceTimersByTimeAsync(1000);
      const fromLocal = await pending;
      expect(fromLocal.granted).toBe(true);
      // The local budget has no lateness check of its own, and Redis is not asked about its grant.
      expect(store.mayStart(fromLocal.grant as Grant, 100)).toBe(true);
      expect(shared.judged).toEqual([]);
      // The grant made in Redis before the switch is still Redis's to judge, as that grant.
      expect(store.mayStart(fromRedis.grant as Grant, 100)).toBe(false);
      expect(shared.judged).toHaveLength(1);
      expect(shared.judged[0]).toBe(shared.issued[0]);
      // A late local start moves that start in the local record; a shared grant moves nothing.
      const before = (await store.reserve(PROBE_MAX_DELAY_MS, 0)).delayMs;
      store.onWireLate(fromRedis.grant as Grant, 30);
      expect((await store.reserve(PROBE_MAX_DELAY_MS, 0)).delayMs).toBeCloseTo(before, 6);
      store.onWireLate(fromLocal.grant as Grant, 50);
      expect((await store.reserve(PROBE_MAX_DELAY_MS, 0)).delayMs).toBeCloseTo(before + 50, 6);
    } finally {
      await store.close();
    }
  });
});
