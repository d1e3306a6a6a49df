import { M2mError } from '../errors.js';

/**
 * The request cannot start within its deadline: the queue is full, the deadline passed, or the
 * budget has no slot in time. `retryAfterMs` is when a start would be allowed, as the slot store
 * answered (never a constant); the proxy rounds it into a `Retry-After` header.
 */
export class RateLimitedError extends M2mError {
  readonly code = 'rate_limited';
  readonly retryAfterMs: number;

  constructor(retryAfterMs: number) {
    super('no pacing slot within the deadline');
    this.retryAfterMs = retryAfterMs;
  }
}

/** The pacer is closed because the process is shutting down: no request starts any more. */
export class ShuttingDownError extends M2mError {
  readonly code = 'shutting_down';

  constructor() {
    super('the pacer is closed: the process is shutting down');
  }
}
