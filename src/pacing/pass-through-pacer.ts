import { raceAbort } from '../abort.js';
import { sleep } from '../clock.js';
import { BasePacer, type PacerOptions } from './base-pacer.js';
import { RateLimitedError, ShuttingDownError } from './errors.js';
import type { AcquireOptions, Pacer, SlotStore } from './types.js';

/**
 * The pacer when pacing is off (`perSecond: 0` and `window.max: 0`): nothing is delayed for a
 * budget, but `ready` (the token), `queue.max`, the deadline and an upstream pause still apply.
 * It is the hot path of the throughput benchmark, so a request that needs no waiting costs two
 * comparisons and one histogram observation.
 */
export class PassThroughPacer extends BasePacer implements Pacer {
  readonly #store: SlotStore | undefined;

  /** `store`, if given, is only closed with the pacer (pacing is off, so it is never asked). */
  constructor(options: PacerOptions & { store?: SlotStore }) {
    super(options);
    this.#store = options.store;
  }

  /** Nothing is paced, so nothing waits for a start to be confirmed, and no start is late. */
  onWire(): boolean {
    return true;
  }

  /** Pacing is off: a request starts at once unless the pacer is closed or paused. */
  tryAcquireNow(): boolean {
    if (this.closed || this.pausedUntil > this.clock.now()) return false;
    this.metrics.queueWait.observe(0);
    return true;
  }

  /** See `Pacer.acquire`. */
  async acquire(options: AcquireOptions): Promise<void> {
    const { deadline, signal, ready } = options;
    if (this.closed) throw new ShuttingDownError();
    signal?.throwIfAborted();
    const since = this.clock.now();
    if (!ready && this.pausedUntil <= since) {
      this.metrics.queueWait.observe(0);
      return;
    }
    if (this.count >= this.admitMax) throw new RateLimitedError(this.pausedUntil - since);
    this.setWaiting(this.count + 1);
    try {
      if (ready) await raceAbort(ready(deadline, signal), signal);
      for (let now = this.clock.now(); this.pausedUntil > now; now = this.clock.now()) {
        if (this.closed) throw new ShuttingDownError();
        if (this.pausedUntil > deadline || this.noQueue)
          throw new RateLimitedError(this.pausedUntil - now);
        await sleep(this.clock, Math.ceil(this.pausedUntil - now), signal);
      }
      if (this.closed) throw new ShuttingDownError();
    } finally {
      this.setWaiting(this.count - 1);
    }
    this.metrics.queueWait.observe((this.clock.now() - since) / 1000);
  }

  /** Stops admitting; requests still waiting are rejected with `ShuttingDownError` when they wake. */
  async close(): Promise<void> {
    this.closed = true;
    await this.#store?.close();
  }
}
