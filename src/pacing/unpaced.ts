import { ProxyError } from '../errors.js';
import type { AcquireOptions, Pacer } from './types.js';

/** TEMPORARY stand-in until the pacing module lands: admission + `ready`, no delays. */
export class UnpacedPacer implements Pacer {
  #waiting = 0;
  constructor(private readonly queueMax: number) {}
  get waiting(): number {
    return this.#waiting;
  }
  async acquire(options: AcquireOptions): Promise<void> {
    if (this.#waiting >= this.queueMax)
      throw new ProxyError('rate_limited', undefined, { retryAfterSeconds: 1 });
    if (!options.ready) return;
    this.#waiting += 1;
    try {
      await options.ready(options.deadline, options.signal);
    } finally {
      this.#waiting -= 1;
    }
  }
  pauseUntil(_until: number): void {}
  async close(): Promise<void> {}
}
