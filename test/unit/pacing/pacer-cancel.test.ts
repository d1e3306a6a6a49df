import { Registry } from 'prom-client';
import { describe, expect, it, vi } from 'vitest';
import { sleep, systemClock } from '../../../src/clock.js';
import { Metrics } from '../../../src/metrics/metrics.js';
import { QueuePacer } from '../../../src/pacing/queue-pacer.js';
import type { Reservation, SlotStore } from '../../../src/pacing/types.js';
import { T0, track, useFakeTimeFromT0 } from './helpers.js';

// A store that takes a while to answer (the fleet's store waits until a slot is nearly due before
// Redis grants it): the pacer must stop it when the waiting head leaves, so that it neither keeps
// asking nor takes a slot nobody will use.

useFakeTimeFromT0();

/**
 * Answers a reservation after `waitMs` (on the fake clock) with a slot due now, or rejects with
 * the signal's reason when it aborts first; records every signal.
 */
function slowStore(waitMs: number) {
  const signals: AbortSignal[] = [];
  let granted = 0;
  const store: SlotStore = {
    async reserve(maxDelayMs, _notBeforeMs, signal?: AbortSignal): Promise<Reservation> {
      // A probe (for a Retry-After) is answered at once, as every store does.
      if (maxDelayMs < 0) return { granted: false, delayMs: 1000 };
      if (signal) signals.push(signal);
      await sleep(systemClock, waitMs, signal);
      granted++;
      return { granted: true, delayMs: 0 };
    },
    close: async () => undefined,
  };
  return { store, signals, granted: () => granted };
}

function pacerOn(store: SlotStore): QueuePacer {
  return new QueuePacer({
    clock: systemClock,
    metrics: new Metrics(new Registry(), { defaultMetrics: false }).forRoutes(['default']),
    queueMax: 10,
    queueTimeoutMs: 30_000,
    store,
    awaitOnWire: false,
  });
}

describe('a head whose store is still answering', () => {
  it('stops the store when its client leaves, and the next request gets the next answer', async () => {
    const { store, signals, granted } = slowStore(500);
    const pacer = pacerOn(store);
    const gone = new AbortController();
    const first = track(pacer.acquire({ deadline: T0 + 60_000, signal: gone.signal }));
    const second = track(pacer.acquire({ deadline: T0 + 60_000 }));
    await vi.advanceTimersByTimeAsync(100);
    expect(signals).toHaveLength(1);
    gone.abort(new Error('client gone'));
    await vi.advanceTimersByTimeAsync(0);
    expect(first.state).toBe('rejected');
    // The store was told, at once: it grants nothing for the request that left.
    expect(signals[0]?.aborted).toBe(true);
    await vi.advanceTimersByTimeAsync(500);
    expect(second.state).toBe('resolved');
    expect(granted()).toBe(1);
    await pacer.close();
  });

  it('stops the store when the head reaches its deadline while the store waits', async () => {
    const { store, signals, granted } = slowStore(5_000);
    const pacer = pacerOn(store);
    const head = track(pacer.acquire({ deadline: T0 + 1_000 }));
    await vi.advanceTimersByTimeAsync(1_000);
    expect(head.state).toBe('rejected');
    expect(signals[0]?.aborted).toBe(true);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(granted()).toBe(0);
    await pacer.close();
  });

  it('stops the store when the pacer closes', async () => {
    const { store, signals, granted } = slowStore(5_000);
    const pacer = pacerOn(store);
    const head = track(pacer.acquire({ deadline: T0 + 60_000 }));
    await vi.advanceTimersByTimeAsync(10);
    await pacer.close();
    await vi.advanceTimersByTimeAsync(0);
    expect(head.state).toBe('rejected');
    expect(signals[0]?.aborted).toBe(true);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(granted()).toBe(0);
  });
});
