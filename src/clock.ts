/**
 * Time as the rest of the code sees it. Modules take a `Clock` in their constructor so unit tests
 * can run renewal, backoff and pacing in fake time.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  setTimeout(fn: () => void, ms: number): Timer;
  clearTimeout(timer: Timer): void;
}

/** Node's largest timer delay (2^31 − 1 ms); a longer one fires after 1 ms instead. */
export const MAX_TIMER_MS = 2_147_483_647;

/** An opaque timer handle; `unref` lets a timer not keep the process alive. */
export interface Timer {
  unref?(): unknown;
}

/**
 * The real clock. It looks the globals up on every call rather than binding them once, so
 * `vi.useFakeTimers()` installed after construction still takes effect.
 */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => clearTimeout(timer as ReturnType<typeof setTimeout>),
};

/** Resolves after `ms` on `clock`, or rejects with the signal's reason when it aborts first. */
export function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clock.clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = clock.setTimeout(
      () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      },
      Math.max(0, ms),
    );
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
