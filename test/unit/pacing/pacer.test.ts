import { Registry } from 'prom-client';
import { describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import { Metrics } from '../../../src/metrics/metrics.js';
import { RateLimitedError } from '../../../src/pacing/errors.js';
import { LocalSlotStore } from '../../../src/pacing/local-slot-store.js';
import { createPacer } from '../../../src/pacing/pacer.js';
import { PassThroughPacer } from '../../../src/pacing/pass-through-pacer.js';
import { ON_WIRE_WAIT_MAX_MS, QueuePacer } from '../../../src/pacing/queue-pacer.js';
import { ProxyError, toProxyError } from '../../../src/proxy/errors.js';
import { FOREVER, flush, metricValue, setup, T0, track, useFakeTimeFromT0 } from './helpers.js';

useFakeTimeFromT0();

/** Asserts `error` is `rate_limited` (as the proxy answers it) and returns its Retry-After. */
function retryAfterOf(error: unknown): number {
  const e = toProxyError(error) as ProxyError;
  expect(e).toBeInstanceOf(ProxyError);
  expect(e.code).toBe('rate_limited');
  expect(e.status).toBe(429);
  expect(Number.isInteger(e.retryAfterSeconds)).toBe(true);
  expect(e.retryAfterSeconds).toBeGreaterThanOrEqual(1);
  return e.retryAfterSeconds as number;
}

describe('QueuePacer: the 5-minute window', () => {
  it('fits exactly 2000 starts in 5 minutes, and the 2001st waits until the first leaves the window', async () => {
    // Window at the contract default (2000 per 5 m); 10/s so that the window, not the bucket,
    // is what binds (at 6/s the bucket allows only 1 + 300 × 6 = 1801 per 5 minutes).
    const { pacer, metrics } = setup({
      perSecond: 10,
      burst: 1,
      windowMax: 2000,
      windowMs: 300_000,
      queueMax: 5000,
    });
    const all = Array.from({ length: 2001 }, () => track(pacer.acquire({ deadline: FOREVER })));
    await vi.advanceTimersByTimeAsync(300_000 - 1);
    expect(all.filter((t) => t.state === 'resolved')).toHaveLength(2000);
    expect(all[0]?.at).toBe(T0);
    expect(all[1999]?.at).toBe(T0 + 199_900);
    expect(all[2000]?.state).toBe('pending');
    expect(await metricValue(metrics, 'm2m_proxy_window_remaining')).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(all[2000]?.state).toBe('resolved');
    expect(all[2000]?.at).toBe(T0 + 300_000);
  });

  it('at the contract defaults (6/s, burst 1, 2000 per 5 m) the bucket binds first: 1801 starts in 5 minutes', async () => {
    const { pacer } = setup({
      perSecond: 6,
      burst: 1,
      windowMax: 2000,
      windowMs: 300_000,
      queueMax: 5000,
    });
    const all = Array.from({ length: 2001 }, () => track(pacer.acquire({ deadline: FOREVER })));
    // 1 + 300 × 6 starts in the closed 5 minutes (+1 ms: timers fire on whole milliseconds).
    await vi.advanceTimersByTimeAsync(300_000 + 1);
    expect(all.filter((t) => t.state === 'resolved')).toHaveLength(1801);
    await vi.advanceTimersByTimeAsync(40_000);
    expect(all.every((t) => t.state === 'resolved')).toBe(true);
    // The 2001st start is bucket-bound: 2000 intervals of 1/6 s after the first.
    const last = (all[2000]?.at as number) - T0;
    expect(last).toBeGreaterThanOrEqual((2000 * 1000) / 6);
    expect(last).toBeLessThanOrEqual((2000 * 1000) / 6 + 1);
  });
});

describe('QueuePacer: admission, deadline, abort', () => {
  it('rejects at once with rate_limited when the queue is full, Retry-After computed from the next free slot', async () => {
    const { pacer } = setup({ perSecond: 1, queueMax: 2 });
    await pacer.acquire({ deadline: FOREVER }); // starts at T0
    const b = track(pacer.acquire({ deadline: FOREVER })); // head, slot at T0 + 1 s
    const c = track(pacer.acquire({ deadline: FOREVER })); // queued, would get T0 + 2 s
    await flush();
    expect(pacer.waiting).toBe(2);
    const d = track(pacer.acquire({ deadline: FOREVER }));
    await flush();
    expect(d.state).toBe('rejected');
    expect(d.at).toBe(T0);
    // b holds T0 + 1 s; the next free slot is at T0 + 2 s.
    expect(retryAfterOf(d.error)).toBe(2);
    await vi.advanceTimersByTimeAsync(2000);
    expect([b.at, c.at]).toEqual([T0 + 1000, T0 + 2000]);
  });

  it('computes Retry-After from the exhausted window, not a constant', async () => {
    const { pacer } = setup({ perSecond: 0, windowMax: 1, windowMs: 120_000, queueMax: 1 });
    await pacer.acquire({ deadline: FOREVER });
    const b = track(pacer.acquire({ deadline: FOREVER })); // holds the slot at T0 + 120 s
    await flush();
    const c = track(pacer.acquire({ deadline: FOREVER }));
    await flush();
    expect(retryAfterOf(c.error)).toBe(240);
    await vi.advanceTimersByTimeAsync(120_000);
    expect(b.at).toBe(T0 + 120_000);
  });

  it('rejects the head at once when its slot lies beyond its deadline, with Retry-After from the store', async () => {
    const { pacer } = setup({ perSecond: 0, windowMax: 1, windowMs: 90_000 });
    await pacer.acquire({ deadline: FOREVER });
    const b = track(pacer.acquire({ deadline: T0 + 30_000 }));
    await flush();
    expect(b.state).toBe('rejected');
    expect(b.at).toBe(T0);
    expect(retryAfterOf(b.error)).toBe(90);
    expect(pacer.waiting).toBe(0);
  });

  it('rejects a queued request when its deadline passes, and it never starts', async () => {
    const { pacer, store } = setup({ perSecond: 1 });
    await pacer.acquire({ deadline: FOREVER }); // T0
    const b = track(pacer.acquire({ deadline: FOREVER })); // head: T0 + 1 s
    const c = track(pacer.acquire({ deadline: T0 + 500 })); // queued behind b
    await vi.advanceTimersByTimeAsync(499);
    expect(c.state).toBe('pending');
    await vi.advanceTimersByTimeAsync(1);
    expect(c.state).toBe('rejected');
    expect(c.at).toBe(T0 + 500);
    // b holds T0 + 1 s: the next free start is T0 + 2 s, 1.5 s away, rounded up.
    expect(retryAfterOf(c.error)).toBe(2);
    await vi.advanceTimersByTimeAsync(5000);
    expect(b.at).toBe(T0 + 1000);
    expect(store.granted).toHaveLength(2); // c never reserved a slot
  });

  it('removes a request whose client aborts while queued; it never starts and the next one moves up', async () => {
    const { pacer, store, metrics } = setup({ perSecond: 1 });
    await pacer.acquire({ deadline: FOREVER }); // T0
    const b = track(pacer.acquire({ deadline: FOREVER })); // head: T0 + 1 s
    const client = new AbortController();
    const c = track(pacer.acquire({ deadline: FOREVER, signal: client.signal }));
    const d = track(pacer.acquire({ deadline: FOREVER }));
    await flush();
    expect(pacer.waiting).toBe(3);
    const reason = new Error('client went away');
    client.abort(reason);
    await flush();
    expect(c.state).toBe('rejected');
    expect(c.error).toBe(reason);
    expect(pacer.waiting).toBe(2);
    expect(await metricValue(metrics, 'm2m_proxy_queue_length')).toBe(2);
    await vi.advanceTimersByTimeAsync(5000);
    expect([b.at, d.at]).toEqual([T0 + 1000, T0 + 2000]);
    expect(store.granted).toHaveLength(3);
  });

  it('leaves the slot of an aborted head unused: the next request takes the slot after it', async () => {
    const { pacer, store } = setup({ perSecond: 1 });
    await pacer.acquire({ deadline: FOREVER }); // T0
    const client = new AbortController();
    const b = track(pacer.acquire({ deadline: FOREVER, signal: client.signal })); // slot T0 + 1 s
    const c = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(300);
    client.abort(new Error('gone'));
    await vi.advanceTimersByTimeAsync(5000);
    expect(b.state).toBe('rejected');
    expect(c.at).toBe(T0 + 2000);
    expect(store.granted).toEqual([T0, T0 + 1000, T0 + 2000]);
  });

  it('rejects each queued request at its own deadline when deadlines are not in queue order', async () => {
    // A request whose body (or token) took longer joins behind later arrivals with an earlier
    // deadline; one timer serves all deadlines, so it must still fire at each.
    const { pacer } = setup({ perSecond: 0.1 });
    await pacer.acquire({ deadline: FOREVER }); // T0
    const b = track(pacer.acquire({ deadline: FOREVER })); // head: T0 + 10 s
    const c = track(pacer.acquire({ deadline: T0 + 3000 }));
    const d = track(pacer.acquire({ deadline: T0 + 1000 }));
    const e = track(pacer.acquire({ deadline: T0 + 2000 }));
    const f = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(5000);
    expect([d.at, e.at, c.at]).toEqual([T0 + 1000, T0 + 2000, T0 + 3000]);
    // b holds T0 + 10 s, so the next free start is T0 + 20 s, counted from each rejection.
    expect([c, d, e].map((t) => retryAfterOf(t.error))).toEqual([17, 19, 18]);
    expect(pacer.waiting).toBe(2);
    await vi.advanceTimersByTimeAsync(20_000);
    expect([b.at, f.at]).toEqual([T0 + 10_000, T0 + 20_000]);
  });

  it('keeps the next head from reserving until an aborted head has its answer from the store', async () => {
    // p-queue moves on as soon as the head's signal aborts; the store (Redis) may still be
    // answering that head. The next head must wait for that answer: one reservation at a time.
    const { pacer, store } = setup({ perSecond: 1 });
    const answer = store.reserve.bind(store);
    const asked: number[] = [];
    store.reserve = async (maxDelayMs, notBeforeMs) => {
      asked.push(Date.now() - T0);
      await new Promise((resolve) => setTimeout(resolve, 50)); // one round trip
      return answer(maxDelayMs, notBeforeMs);
    };
    const client = new AbortController();
    const b = track(pacer.acquire({ deadline: FOREVER, signal: client.signal }));
    const c = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(10);
    client.abort(new Error('gone'));
    await vi.advanceTimersByTimeAsync(5000);
    expect(b.state).toBe('rejected');
    expect(asked).toEqual([0, 50]);
    expect(c.at).toBe(T0 + 1050); // the slot after b's unused one (T0 + 50, when it was answered)
    expect(pacer.waiting).toBe(0);
  });

  it('rejects at once when the signal is already aborted', async () => {
    const { pacer } = setup();
    const reason = new Error('already gone');
    await expect(
      pacer.acquire({ deadline: FOREVER, signal: AbortSignal.abort(reason) }),
    ).rejects.toBe(reason);
    expect(pacer.waiting).toBe(0);
  });
});

describe('QueuePacer: upstream pause', () => {
  it('starts nothing before the end of a pause', async () => {
    const { pacer } = setup({ perSecond: 10, burst: 5 });
    pacer.pauseUntil(T0 + 3000);
    const a = track(pacer.acquire({ deadline: FOREVER }));
    const b = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(2999);
    expect(a.state).toBe('pending');
    await vi.advanceTimersByTimeAsync(1);
    expect([a.at, b.at]).toEqual([T0 + 3000, T0 + 3000]); // the burst is still available
  });

  it('caps a pause at queue.timeout', async () => {
    const { pacer } = setup({ perSecond: 10, queueTimeoutMs: 5000 });
    pacer.pauseUntil(T0 + 3_600_000); // Retry-After: 3600
    const a = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(10_000);
    expect(a.at).toBe(T0 + 5000);
  });

  it('a pause arriving while the head waits for its slot moves that start after the pause', async () => {
    const { pacer } = setup({ perSecond: 1 });
    await pacer.acquire({ deadline: FOREVER }); // T0
    const b = track(pacer.acquire({ deadline: FOREVER })); // slot T0 + 1 s
    await vi.advanceTimersByTimeAsync(200);
    pacer.pauseUntil(T0 + 4000);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(b.at).toBe(T0 + 4000);
  });

  it('rejects with a Retry-After covering the pause when the pause outlasts the deadline', async () => {
    const { pacer } = setup({ perSecond: 1 });
    pacer.pauseUntil(T0 + 10_000);
    const a = track(pacer.acquire({ deadline: T0 + 2000 }));
    await flush();
    expect(a.state).toBe('rejected');
    expect(retryAfterOf(a.error)).toBe(10);
  });
});

describe('QueuePacer: ready (the token)', () => {
  it('counts requests waiting in ready() towards queue.max and the queue-length gauge, concurrently', async () => {
    const { pacer, metrics } = setup({ perSecond: 1000, queueMax: 2 });
    let release = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const ready = vi.fn(() => gate);
    const a = track(pacer.acquire({ deadline: FOREVER, ready }));
    const b = track(pacer.acquire({ deadline: FOREVER, ready }));
    await flush();
    expect(ready).toHaveBeenCalledTimes(2); // not serialised behind each other
    expect(pacer.waiting).toBe(2);
    expect(await metricValue(metrics, 'm2m_proxy_queue_length')).toBe(2);
    const c = track(pacer.acquire({ deadline: FOREVER, ready }));
    await flush();
    expect(retryAfterOf(c.error)).toBe(1); // 1000/s: a start is free at once, 1 s is the floor
    expect(ready).toHaveBeenCalledTimes(2);
    release();
    await vi.advanceTimersByTimeAsync(10);
    expect([a.state, b.state]).toEqual(['resolved', 'resolved']);
    expect(pacer.waiting).toBe(0);
    expect(await metricValue(metrics, 'm2m_proxy_queue_length')).toBe(0);
  });

  it('passes the deadline and signal to ready() and propagates its rejection unchanged', async () => {
    const { pacer, store } = setup();
    const failure = new ProxyError('token_unavailable');
    const signal = new AbortController().signal;
    const ready = vi.fn(() => Promise.reject(failure));
    await expect(pacer.acquire({ deadline: T0 + 30_000, signal, ready })).rejects.toBe(failure);
    expect(ready).toHaveBeenCalledWith(T0 + 30_000, signal);
    expect(pacer.waiting).toBe(0);
    expect(store.calls).toHaveLength(0);
  });

  it('rejects at once when the client aborts during ready(), even if ready() ignores the signal', async () => {
    const { pacer } = setup();
    const client = new AbortController();
    const a = track(
      pacer.acquire({
        deadline: FOREVER,
        signal: client.signal,
        ready: () => new Promise(() => {}),
      }),
    );
    await flush();
    client.abort(new Error('gone'));
    await flush();
    expect(a.state).toBe('rejected');
    expect(pacer.waiting).toBe(0);
  });
});

describe('QueuePacer: metrics and shutdown', () => {
  it('observes the queue wait in seconds from acquire to start', async () => {
    const { pacer, metrics } = setup({ perSecond: 2 });
    await pacer.acquire({ deadline: FOREVER });
    const b = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(500);
    expect(b.state).toBe('resolved');
    expect(await metricValue(metrics, 'm2m_proxy_queue_wait_seconds')).toBe(2);
    const json = await metrics.registry.getSingleMetricAsString('m2m_proxy_queue_wait_seconds');
    expect(json).toMatch(/m2m_proxy_queue_wait_seconds_sum\{route="default"\} 0\.5\b/);
  });

  it('m2m_proxy_window_remaining rises again as starts leave the window, with no request coming', async () => {
    const metrics = new Metrics(new Registry(), { defaultMetrics: false });
    const store = new LocalSlotStore({
      perSecond: 10,
      burst: 1,
      windowMax: 3,
      windowMs: 10_000,
      clock: systemClock,
    });
    const pacer = new QueuePacer({
      store,
      clock: systemClock,
      metrics: metrics.forRoutes(['default']),
      queueMax: 10,
      queueTimeoutMs: 30_000,
      awaitOnWire: false,
    });
    const gauge = () => metricValue(metrics, 'm2m_proxy_window_remaining');
    const starts = Array.from({ length: 3 }, () => track(pacer.acquire({ deadline: FOREVER })));
    await vi.advanceTimersByTimeAsync(200);
    expect(starts.map((t) => (t.at as number) - T0)).toEqual([0, 100, 200]);
    expect(await gauge()).toBe(0);
    // Idle: nothing reserves, yet each start leaves the window exactly 10 s after it happened.
    await vi.advanceTimersByTimeAsync(10_000 - 200 - 1);
    expect(await gauge()).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(await gauge()).toBe(1);
    await vi.advanceTimersByTimeAsync(200);
    expect(await gauge()).toBe(3);
    // A reserved start in the future counts as used at once.
    await pacer.acquire({ deadline: FOREVER });
    expect(await gauge()).toBe(2);
    // After close the hook is gone: the gauge keeps its last value, the store is not read.
    await pacer.close();
    await vi.advanceTimersByTimeAsync(20_000);
    expect(await gauge()).toBe(2);
  });

  it('with a store that cannot tell the window synchronously (Redis), the gauge keeps the last reservation', async () => {
    // `setup`'s RecordingStore implements only `reserve`, like the Redis store.
    const { pacer, metrics } = setup({ perSecond: 10, windowMax: 3, windowMs: 10_000 });
    await pacer.acquire({ deadline: FOREVER });
    expect(await metricValue(metrics, 'm2m_proxy_window_remaining')).toBe(2);
    await vi.advanceTimersByTimeAsync(20_000);
    expect(await metricValue(metrics, 'm2m_proxy_window_remaining')).toBe(2);
  });

  it('does not count rejections itself (the proxy handler does)', async () => {
    const { pacer, metrics } = setup({ perSecond: 1, queueMax: 1 });
    await pacer.acquire({ deadline: FOREVER });
    track(pacer.acquire({ deadline: FOREVER }));
    await flush();
    await expect(pacer.acquire({ deadline: FOREVER })).rejects.toBeInstanceOf(RateLimitedError);
    const text = await metrics.registry.getSingleMetricAsString(
      'm2m_proxy_requests_rejected_total',
    );
    // The series exists from the start (at 0); the pacer never increments it.
    expect(text).toMatch(
      /^m2m_proxy_requests_rejected_total\{route="default",reason="rate_limited"\} 0$/m,
    );
  });

  it('close() rejects what is still queued with shutting_down and admits nothing more', async () => {
    const { pacer } = setup({ perSecond: 1 });
    await pacer.acquire({ deadline: FOREVER });
    const b = track(pacer.acquire({ deadline: FOREVER }));
    const c = track(pacer.acquire({ deadline: FOREVER }));
    await flush();
    await pacer.close();
    await flush();
    expect(toProxyError(b.error)?.code).toBe('shutting_down');
    expect(toProxyError(c.error)?.code).toBe('shutting_down');
    expect(pacer.waiting).toBe(0);
    await expect(pacer.acquire({ deadline: FOREVER })).rejects.toMatchObject({
      code: 'shutting_down',
    });
    await vi.advanceTimersByTimeAsync(5000);
    expect(b.state).toBe('rejected');
  });

  it('queue.max 0 means no queue: a request starts only when its slot is free at once', async () => {
    const { pacer } = setup({ perSecond: 1, queueMax: 0 });
    await pacer.acquire({ deadline: FOREVER });
    const b = track(pacer.acquire({ deadline: FOREVER }));
    await flush();
    expect(retryAfterOf(b.error)).toBe(1);
    await vi.advanceTimersByTimeAsync(1000);
    await expect(pacer.acquire({ deadline: FOREVER })).resolves.toBeUndefined();
  });
});

describe('PassThroughPacer and createPacer', () => {
  const rateLimit = (perSecond: number, max: number) => ({
    perSecond,
    burst: 1,
    window: { max, length: 300_000 },
    queue: { max: 2, timeout: 30_000 },
  });
  const metrics = () => new Metrics(new Registry(), { defaultMetrics: false });

  it('createPacer returns a pass-through pacer only when both limits are off', () => {
    const deps = { clock: systemClock, metrics: metrics().forRoutes(['default']) };
    expect(createPacer(rateLimit(0, 0), deps)).toBeInstanceOf(PassThroughPacer);
    expect(createPacer(rateLimit(6, 0), deps)).toBeInstanceOf(QueuePacer);
    expect(createPacer(rateLimit(0, 2000), deps)).toBeInstanceOf(QueuePacer);
  });

  it('never delays when pacing is off', async () => {
    const pacer = createPacer(rateLimit(0, 0), {
      clock: systemClock,
      metrics: metrics().forRoutes(['default']),
    });
    const all = Array.from({ length: 100 }, () => track(pacer.acquire({ deadline: FOREVER })));
    await flush();
    expect(all.every((t) => t.state === 'resolved' && t.at === T0)).toBe(true);
  });

  it('still applies ready(), queue.max and the pause when pacing is off', async () => {
    const m = metrics();
    const pacer = createPacer(rateLimit(0, 0), {
      clock: systemClock,
      metrics: m.forRoutes(['default']),
    });
    let release = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const a = track(pacer.acquire({ deadline: FOREVER, ready: () => gate }));
    const b = track(pacer.acquire({ deadline: FOREVER, ready: () => gate }));
    const c = track(pacer.acquire({ deadline: FOREVER, ready: () => gate }));
    await flush();
    expect(pacer.waiting).toBe(2);
    expect(await metricValue(m, 'm2m_proxy_queue_length')).toBe(2);
    expect(retryAfterOf(c.error)).toBe(1); // no pause yet, no pacing: the floor
    pacer.pauseUntil(T0 + 2000);
    release();
    await vi.advanceTimersByTimeAsync(1999);
    expect(a.state).toBe('pending');
    await vi.advanceTimersByTimeAsync(1);
    expect([a.at, b.at]).toEqual([T0 + 2000, T0 + 2000]);
    const failure = new ProxyError('token_unavailable');
    await expect(
      pacer.acquire({ deadline: FOREVER, ready: () => Promise.reject(failure) }),
    ).rejects.toBe(failure);
    expect(pacer.waiting).toBe(0);
  });

  it('reserves the next start only once the previous one is on the wire, counted from then', async () => {
    // 10/s: starts 100 ms apart. The first request needs a new connection and reaches the wire
    // 40 ms after its slot; the second must follow the real send, not the slot.
    const { pacer, store } = setup({ perSecond: 10, awaitOnWire: true });
    const first = track(pacer.acquire({ deadline: FOREVER }));
    const second = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(0);
    expect(first.state).toBe('resolved');
    await vi.advanceTimersByTimeAsync(40);
    expect(store.calls).toHaveLength(1); // the second has not reserved: the first is not sent
    pacer.onWire();
    const third = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(100);
    expect((second.at as number) - T0).toBe(140);
    pacer.onWire(); // on time: nothing moves
    await vi.advanceTimersByTimeAsync(200);
    expect((third.at as number) - T0).toBe(240);
  });

  it(`goes on after ${ON_WIRE_WAIT_MAX_MS} ms when a start is never confirmed, counting it as sent then`, async () => {
    const { pacer } = setup({ perSecond: 10, awaitOnWire: true });
    const first = track(pacer.acquire({ deadline: FOREVER }));
    const second = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(ON_WIRE_WAIT_MAX_MS + 500);
    expect(first.at).toBe(T0);
    expect((second.at as number) - T0).toBe(ON_WIRE_WAIT_MAX_MS + 100);
  });

  it('keeps the limits on real start times when a start is late (a stalled event loop)', async () => {
    // One timer fires 150 ms late, as after a GC pause or a blocked event loop. Without moving the
    // recorded start, the next slot (already due) would follow the late start at once.
    let stalls = 1;
    const stallingClock = {
      ...systemClock,
      setTimeout: (fn: () => void, ms: number) =>
        systemClock.setTimeout(fn, ms > 0 && stalls-- > 0 ? ms + 150 : ms),
    };
    const metrics = new Metrics(new Registry(), { defaultMetrics: false });
    const store = new LocalSlotStore({
      perSecond: 10,
      burst: 1,
      windowMax: 0,
      windowMs: 1,
      clock: stallingClock,
    });
    const pacer = new QueuePacer({
      store,
      clock: stallingClock,
      metrics: metrics.forRoutes(['default']),
      queueMax: 100,
      queueTimeoutMs: 30_000,
      awaitOnWire: false,
    });
    const starts = Array.from({ length: 4 }, () => track(pacer.acquire({ deadline: FOREVER })));
    await vi.advanceTimersByTimeAsync(2000);
    const at = starts.map((s) => (s.at as number) - T0);
    expect(at).toEqual([0, 250, 350, 450]);
  });
});

describe('QueuePacer: a shared store that forfeits late starts', () => {
  /** A local store whose `mayStart` allows `toleranceMs` of lateness, recording every answer. */
  function forfeitingSetup(toleranceMs: number) {
    // `stall.ms`: the next timer fires that much late (a frozen process), then timers are punctual.
    const stall = { ms: 0 };
    const clock = {
      ...systemClock,
      setTimeout: (fn: () => void, ms: number) => {
        const late = ms > 0 ? stall.ms : 0;
        if (ms > 0) stall.ms = 0;
        return systemClock.setTimeout(fn, ms + late);
      },
    };
    const inner = new LocalSlotStore({
      perSecond: 10,
      burst: 1,
      windowMax: 0,
      windowMs: 1000,
      clock,
    });
    const asked: number[] = [];
    let reservations = 0;
    const store = {
      async reserve(maxDelayMs: number, notBeforeMs: number) {
        reservations++;
        return inner.reserve(maxDelayMs, notBeforeMs);
      },
      mayStart(_grant: object, lateMs: number) {
        asked.push(lateMs);
        return lateMs <= toleranceMs;
      },
      close: () => inner.close(),
    };
    const metrics = new Metrics(new Registry(), { defaultMetrics: false }).forRoutes(['default']);
    const pacer = new QueuePacer({
      clock,
      metrics,
      queueMax: 100,
      queueTimeoutMs: 30_000,
      store,
      awaitOnWire: true,
    });
    return { pacer, asked, stall, reservations: () => reservations };
  }

  it('gives up a slot its timer reached too late and reserves again, instead of starting late', async () => {
    const { pacer, asked, stall, reservations } = forfeitingSetup(10);
    const first = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(0);
    expect(first.state).toBe('resolved');
    // The second's slot is at +100 ms; the process stalls past it: its timer runs 150 ms late.
    stall.ms = 150;
    expect(pacer.onWire()).toBe(true);
    const second = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(249);
    expect(second.state).toBe('pending');
    await vi.advanceTimersByTimeAsync(1);
    expect(asked).toContain(150);
    expect(reservations()).toBe(3); // the forfeited slot, then a new one
    // Not at its late wake-up on the old slot: at the new slot, which the store allows now.
    expect(second.state).toBe('resolved');
    expect(second.at).toBe(T0 + 250);
  });

  it('onWire() says false when the start reaches the socket too late for its slot, and the pacer moves on', async () => {
    const { pacer, asked } = forfeitingSetup(10);
    const first = track(pacer.acquire({ deadline: FOREVER }));
    const second = track(pacer.acquire({ deadline: FOREVER }));
    await vi.advanceTimersByTimeAsync(0);
    expect(first.state).toBe('resolved');
    // Granted on time, then stalled 40 ms before the write: the start must not happen.
    await vi.advanceTimersByTimeAsync(40);
    expect(pacer.onWire()).toBe(false);
    expect(asked.at(-1)).toBe(40);
    // The next head reserves (the slot after the forfeited one) and starts on time.
    await vi.advanceTimersByTimeAsync(60);
    expect(second.at).toBe(T0 + 100);
    expect(pacer.onWire()).toBe(true);
  });
});
