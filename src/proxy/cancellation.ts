/**
 * One request's cancellation: the client went away, or the upstream took too long. Not an
 * `AbortController`: one per request, with its `EventTarget` listeners, cost 5–7 % of the
 * forwarding CPU in the benchmark profile. The forwarder needs one callback at a time
 * (`onCancel`); a real `AbortSignal` is made only when asked for (a request that has to wait in
 * the pacer's queue).
 */
export class Cancellation {
  #reason: unknown;
  #cancelled = false;
  #controller: AbortController | undefined;
  /** Called once, with the reason, when it is cancelled (the running attempt sets it). */
  onCancel: ((reason: unknown) => void) | undefined;

  get cancelled(): boolean {
    return this.#cancelled;
  }

  /** Why it was cancelled (the first reason given). */
  get reason(): unknown {
    return this.#reason;
  }

  /** An `AbortSignal` that aborts with this cancellation (made on first use). */
  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#cancelled) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  /** Cancels once; later calls keep the first reason. */
  cancel(reason: unknown): void {
    if (this.#cancelled) return;
    this.#cancelled = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
    this.onCancel?.(reason);
  }
}
