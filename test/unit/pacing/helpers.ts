import { Registry } from 'prom-client';
import { afterEach, beforeEach, vi } from 'vitest';
import { type Clock, systemClock } from '../../../src/clock.js';
import { Metrics } from '../../../src/metrics/metrics.js';
import { LocalSlotStore } from '../../../src/pacing/local-slot-store.js';
import { QueuePacer } from '../../../src/pacing/queue-pacer.js';
import type { Grant, Reservation, SlotLimits, SlotStore } from '../../../src/pacing/types.js';

/** Wraps a store and records every granted start time (clock ms, unrounded). */
export class RecordingStore implements SlotStore {
  readonly granted: number[] = [];
  readonly calls: Array<{ maxDelayMs: number; notBeforeMs: number; answer: Reservation }> = [];

  constructor(
    private readonly inner: SlotStore,
    private readonly clock: Clock,
  ) {}

  async reserve(maxDelayMs: number, notBeforeMs: number): Promise<Reservation> {
    const answer = await this.inner.reserve(maxDelayMs, notBeforeMs);
    this.calls.push({ maxDelayMs, notBeforeMs, answer });
    if (answer.granted) this.granted.push(this.clock.now() + answer.delayMs);
    return answer;
  }

  onWireLate(grant: Grant, lateMs: number): void {
    const last = this.granted.length - 1;
    if (last >= 0) this.granted[last] = (this.granted[last] as number) + lateMs;
    this.inner.onWireLate?.(grant, lateMs);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

export interface Setup {
  pacer: QueuePacer;
  store: RecordingStore;
  metrics: Metrics;
}

/** A `QueuePacer` on a recording `LocalSlotStore`, on the (fake-timer-aware) system clock. */
export function setup(
  limits: Partial<SlotLimits> & {
    queueMax?: number;
    queueTimeoutMs?: number;
    awaitOnWire?: boolean;
  } = {},
): Setup {
  const clock = systemClock;
  const metrics = new Metrics(new Registry(), { defaultMetrics: false });
  const store = new RecordingStore(
    new LocalSlotStore({
      perSecond: limits.perSecond ?? 1,
      burst: limits.burst ?? 1,
      windowMax: limits.windowMax ?? 0,
      windowMs: limits.windowMs ?? 300_000,
      clock,
    }),
    clock,
  );
  const pacer = new QueuePacer({
    store,
    clock,
    metrics: metrics.forRoutes(['default']),
    queueMax: limits.queueMax ?? 1000,
    queueTimeoutMs: limits.queueTimeoutMs ?? 30_000,
    awaitOnWire: limits.awaitOnWire ?? false,
  });
  return { pacer, store, metrics };
}

/** The outcome of a promise, observable without awaiting it. */
export interface Tracked {
  state: 'pending' | 'resolved' | 'rejected';
  at: number | undefined;
  error: unknown;
  promise: Promise<void>;
}

/** Follows `promise`, noting when (clock ms) and how it settled. */
export function track(promise: Promise<void>): Tracked {
  const t: Tracked = { state: 'pending', at: undefined, error: undefined, promise };
  promise.then(
    () => {
      t.state = 'resolved';
      t.at = Date.now();
    },
    (error: unknown) => {
      t.state = 'rejected';
      t.at = Date.now();
      t.error = error;
    },
  );
  return t;
}

/** Lets pending promise callbacks run without moving fake time. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

/** The value of a gauge or the count of a histogram in `metrics`. */
export async function metricValue(metrics: Metrics, name: string): Promise<number | undefined> {
  const json = await metrics.registry.getMetricsAsJSON();
  const metric = json.find((m) => m.name === name);
  if (!metric) return undefined;
  const values = metric.values as Array<{ value: number; metricName?: string }>;
  if (String(metric.type) === 'histogram') {
    return values.find((v) => v.metricName === `${name}_count`)?.value;
  }
  return values[0]?.value;
}

/** Where the tests' fake clock starts: a plausible wall-clock time (ms since the epoch). */
export const T0 = 1_700_000_000_000;

/** A deadline that never comes: the request waits as long as the pacer makes it. */
export const FOREVER = Number.POSITIVE_INFINITY;

/** Fake timers starting at {@link T0} for every test of the file that calls this. */
export function useFakeTimeFromT0(): void {
  beforeEach(() => {
    vi.useFakeTimers({ now: T0 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });
}
