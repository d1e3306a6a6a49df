import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import { LocalSlotStore } from '../../../src/pacing/local-slot-store.js';
import { QueuePacer } from '../../../src/pacing/queue-pacer.js';
import type { Reservation, SlotStore } from '../../../src/pacing/types.js';
import { answerOf, metric, routeMetrics, useFakeTime } from '../fakes.js';
import { FOREVER, flush, type Tracked, track } from './helpers.js';

/**
 * A `QueuePacer` whose `SlotStore` fails (a bug in a store, or a store that lost its backend
 * without a fallback): every request still gets an answer, the queue goes on serving the
 * others, and no request is lost or started without a reservation.
 */

/** A store in this process that fails the reservations the test asks it to, in either way. */
class FailingStore implements SlotStore {
  readonly inner = new LocalSlotStore({
    perSecond: 10,
    burst: 1,
    windowMax: 0,
    windowMs: 300_000,
    clock: systemClock,
  });
  /** How the next reservations fail, in order; an empty list: they succeed. */
  failures: Array<'reject' | 'throw'> = [];
  /** Decides for each real reservation (not a probe) after `failures` is empty. */
  failWhen: (() => 'reject' | 'throw' | undefined) | undefined;
  /** Fail every probe (the "when would a start be allowed" question of a turned-away request). */
  failProbes = false;
  /** Granted reservations of real starts. */
  granted = 0;
  calls = 0;

  reserve(maxDelayMs: number, notBeforeMs: number): Promise<Reservation> {
    this.calls += 1;
    const probe = maxDelayMs < 0;
    const failure = probe
      ? this.failProbes
        ? 'throw'
        : undefined
      : (this.failures.shift() ?? this.failWhen?.());
    if (failure === 'throw') throw new Error('store broke (synchronously)');
    if (failure === 'reject') return Promise.reject(new Error('store broke (rejected)'));
    return this.inner.reserve(maxDelayMs, notBeforeMs).then((r) => {
      if (r.granted && maxDelayMs >= 0) this.granted += 1;
      return r;
    });
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** The one place that knows how the `QueuePacer` under test is built (as `createPacer` does). */
function makePacer(options: { queueMax?: number } = {}) {
  const store = new FailingStore();
  const { metrics, route } = routeMetrics();
  const pacer = new QueuePacer({
    store,
    clock: systemClock,
    metrics: route,
    queueMax: options.queueMax ?? 1000,
    queueTimeoutMs: 30_000,
    awaitOnWire: true,
  });
  /** A request as the proxy makes it: acquire, then confirm the start on the wire. */
  const request = (deadline = FOREVER): Tracked => {
    const acquired = pacer.acquire({ deadline });
    void acquired.then(
      () => pacer.onWire(),
      () => {},
    );
    return track(acquired);
  };
  return { pacer, store, metrics, request };
}

beforeEach(() => useFakeTime());
afterEach(() => {
  vi.useRealTimers();
});

describe('QueuePacer with a failing SlotStore', () => {
  it.each(['reject', 'throw'] as const)(
    'the head whose reservation fails (%s) gets that error at once; the requests behind it are served',
    async (how) => {
      const t = makePacer();
      t.store.failures = [how];
      const a = t.request();
      const b = t.request();
      const c = t.request();
      await flush();
      expect(a.state).toBe('rejected');
      expect(String(a.error)).toContain('store broke');
      expect(b.state).toBe('resolved');
      await vi.advanceTimersByTimeAsync(100); // 10/s: the next slot
      expect(c.state).toBe('resolved');
      expect(t.pacer.waiting).toBe(0);
      expect(await metric(t.metrics, 'm2m_proxy_queue_length')).toBe(0);
      expect(t.store.granted).toBe(2);
    },
  );

  it('turns a request away with rate_limited and a Retry-After when the queue is full and the store cannot say when', async () => {
    const t = makePacer({ queueMax: 1 });
    const first = t.request(); // starts at once (burst 1)
    await flush();
    expect(first.state).toBe('resolved');
    const head = t.request(); // holds the next slot, 100 ms on: the queue (of one) is full
    await flush();
    expect(t.pacer.waiting).toBe(1);
    t.store.failProbes = true;
    const turnedAway = t.request();
    await flush();
    expect(turnedAway.state).toBe('rejected');
    expect(answerOf(turnedAway.error)).toEqual({ code: 'rate_limited', retryAfterSeconds: 1 });
    await vi.advanceTimersByTimeAsync(100);
    expect(head.state).toBe('resolved');
    expect(t.pacer.waiting).toBe(0);
  });

  it('rejects a queued request at its deadline with rate_limited even when the store cannot say when', async () => {
    const t = makePacer();
    t.request(); // starts at once
    const head = t.request(); // slot 100 ms on
    const late = t.request(Date.now() + 50); // behind the head, gives up at 50 ms
    await flush();
    t.store.failProbes = true;
    await vi.advanceTimersByTimeAsync(50);
    expect(late.state).toBe('rejected');
    expect(answerOf(late.error).code).toBe('rate_limited');
    await vi.advanceTimersByTimeAsync(50);
    expect(head.state).toBe('resolved');
    expect(t.pacer.waiting).toBe(0);
  });

  it('loses nothing: with a third of the reservations failing, every request is answered and only granted ones start', async () => {
    const t = makePacer();
    let reservations = 0;
    t.store.failWhen = () => {
      reservations += 1;
      if (reservations % 3 !== 0) return undefined;
      return reservations % 2 === 0 ? 'throw' : 'reject';
    };
    const requests = Array.from({ length: 30 }, () => t.request());
    await vi.advanceTimersByTimeAsync(10_000);
    const resolved = requests.filter((r) => r.state === 'resolved').length;
    const rejected = requests.filter((r) => r.state === 'rejected').length;
    expect(resolved + rejected).toBe(30);
    expect(rejected).toBe(10);
    expect(resolved).toBe(t.store.granted);
    expect(t.pacer.waiting).toBe(0);
    expect(await metric(t.metrics, 'm2m_proxy_queue_length')).toBe(0);
    // And it still serves afterwards.
    const after = t.request();
    await vi.advanceTimersByTimeAsync(100);
    expect(after.state).toBe('resolved');
  });
});
