import { Registry } from 'prom-client';
import { describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import { Metrics } from '../../../src/metrics/metrics.js';
import { LocalSlotStore } from '../../../src/pacing/local-slot-store.js';
import { QueuePacer } from '../../../src/pacing/queue-pacer.js';
import { sharing } from '../../../src/pacing/shared-stores.js';
import type { Grant, Reservation, SlotStore } from '../../../src/pacing/types.js';
import { FOREVER, flush, metricValue, track, useFakeTimeFromT0 } from './helpers.js';

useFakeTimeFromT0();

/**
 * A shared store as the fleet's behaves towards its pacers: a local record (100 ms apart, a
 * window of 3 per second) that hands out a handle per grant and judges a start by the handle it
 * is given (late by more than 25 ms: forfeited), remembering whose grant each call was about.
 */
class GrantingStore implements SlotStore {
  readonly inner = new LocalSlotStore({
    perSecond: 10,
    burst: 1,
    windowMax: 3,
    windowMs: 1000,
    clock: systemClock,
  });
  /** Every grant handed out, in order. */
  readonly grants: Grant[] = [];
  readonly signals: Array<AbortSignal | undefined> = [];
  readonly forfeited: Grant[] = [];
  readonly allowed: Grant[] = [];
  closes = 0;

  async reserve(maxDelayMs: number, notBeforeMs: number, signal?: AbortSignal) {
    this.signals.push(signal);
    const answer = await this.inner.reserve(maxDelayMs, notBeforeMs);
    if (answer.grant) this.grants.push(answer.grant);
    return answer;
  }

  mayStart(grant: Grant, lateMs: number): boolean {
    (lateMs > 25 ? this.forfeited : this.allowed).push(grant);
    return lateMs <= 25;
  }

  onWireLate(grant: Grant, lateMs: number): void {
    this.inner.onWireLate(grant, lateMs);
  }

  windowRemaining(): number | undefined {
    return this.inner.windowRemaining();
  }

  async close(): Promise<void> {
    this.closes++;
  }
}

/** Two routes' pacers on one store, each through its own handle, as `sharedStores` builds them. */
function twoRoutes(store: SlotStore) {
  const handle = sharing(store, 2);
  return ['a', 'b'].map((route) => {
    const metrics = new Metrics(new Registry(), { defaultMetrics: false });
    const pacer = new QueuePacer({
      store: handle(),
      clock: systemClock,
      metrics: metrics.forRoutes([route]),
      queueMax: 10,
      queueTimeoutMs: 30_000,
      awaitOnWire: true,
    });
    return { pacer, metrics };
  }) as [{ pacer: QueuePacer; metrics: Metrics }, { pacer: QueuePacer; metrics: Metrics }];
}

describe('one shared store for several routes', () => {
  it("a route's late start forfeits its own grant, never the other route's later one", async () => {
    const store = new GrantingStore();
    const [a, b] = twoRoutes(store);
    const startA = track(a.pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(0);
    expect(startA.state).toBe('resolved');
    const startB = track(b.pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(100);
    expect(startB.state).toBe('resolved');
    const [grantA, grantB] = store.grants;
    // B holds the store's latest grant now; A's request reaches its socket 100 ms after its slot.
    expect(a.pacer.onWire()).toBe(false);
    expect(store.forfeited).toEqual([grantA]);
    // B's start, on time, is judged by its own grant and goes out.
    expect(b.pacer.onWire()).toBe(true);
    expect(store.allowed.at(-1)).toBe(grantB);
    expect(store.forfeited).not.toContain(grantB);
  });

  it("passes the request's cancel signal to the store: a request that leaves stops the store's wait", async () => {
    let stopped: unknown;
    const waiting: SlotStore = {
      // A fleet's store waiting for a slot that is not due yet: it ends only when told to stop.
      reserve: (_max, _notBefore, signal) =>
        new Promise<Reservation>((_resolve, reject) => {
          signal?.addEventListener('abort', () => {
            stopped = signal.reason;
            reject(signal.reason);
          });
        }),
      close: async () => undefined,
    };
    const [a] = twoRoutes(waiting);
    const client = new AbortController();
    const request = track(a.pacer.acquire({ deadline: FOREVER, signal: client.signal }));
    await flush();
    const gone = new Error('client gone');
    client.abort(gone);
    await vi.advanceTimersByTimeAsync(0);
    expect(request.state).toBe('rejected');
    expect(request.error).toBe(gone);
    expect(stopped).toBeDefined();
  });

  it("reads the store's window gauge live for each route", async () => {
    const store = new GrantingStore();
    const [a] = twoRoutes(store);
    const start = track(a.pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(0);
    expect(start.state).toBe('resolved');
    expect(await metricValue(a.metrics, 'm2m_proxy_window_remaining')).toBe(2);
    // No request since: the start leaves the window, and the next scrape says so.
    await vi.advanceTimersByTimeAsync(1000);
    expect(await metricValue(a.metrics, 'm2m_proxy_window_remaining')).toBe(3);
  });

  it('closes the store once, when the last route closes', async () => {
    const store = new GrantingStore();
    const [a, b] = twoRoutes(store);
    await a.pacer.close();
    await a.pacer.close();
    expect(store.closes).toBe(0);
    await b.pacer.close();
    expect(store.closes).toBe(1);
  });
});
