/*
 * Longer than the project's ~300 lines on purpose: the token lifecycle is one state machine (the
 * held token, the renewal and expiry timers, the waiters, the 401 handling and the backoff) whose
 * transitions touch the same few fields; the HTTP grant itself is `client.ts`.
 */
import type { Clock, Timer } from '../clock.js';
import { DEFAULT_ROUTE, displayUrl, type RouteConfig } from '../config/config.js';
import type { ClientCredentials } from '../credentials/credentials.js';
import type { Secret } from '../credentials/secret.js';
import { Deadlines, type Timed } from '../deadlines.js';
import { Audit, clientIdOf } from '../log/audit.js';
import type { Logger } from '../log/logger.js';
import type { RouteMetrics } from '../metrics/metrics.js';
import type { RenewalCause, RenewalObserver } from '../tracing/types.js';
import { type IssuedToken, TokenRequestError, type TokenSource } from './client.js';
import { TokenUnavailableError } from './errors.js';

/**
 * Lifetime assumed when the provider gives neither `expires_in` nor a JWT `exp`. Five minutes is
 * short enough that a token is renewed well before any common provider's expiry (Okta, Entra ID,
 * Auth0: 1 h); if the real lifetime is shorter, the upstream's 401 triggers a renewal anyway.
 */
export const DEFAULT_LIFETIME_MS = 5 * 60_000;

/** What the manager needs; the clock and randomness are injected so tests run in fake time. */
export interface TokenManagerDeps {
  config: RouteConfig['token'];
  source: TokenSource;
  credentials: () => ClientCredentials;
  clock: Clock;
  logger: Logger;
  metrics: RouteMetrics;
  /** Uniform in [0, 1): the jitter of the retry backoff. */
  random?: () => number;
  /** The audit trail; by default one for the route `default` on `logger` (it is always on). */
  audit?: Audit;
  /** Told about every token request (a span per renewal when tracing is on). */
  renewals?: RenewalObserver | undefined;
}

interface Held {
  readonly token: Secret;
  readonly expiresAt: number;
  /** The upstream has answered something other than 401 to this token. */
  accepted: boolean;
}

/**
 * A request waiting for a token. Every request queued at start-up (or after an expiry) has one,
 * so it carries its own deadline links: one timer serves all waiters (`Deadlines`).
 */
class Waiter implements Timed<Waiter> {
  earlier: Waiter | undefined = undefined;
  later: Waiter | undefined = undefined;
  /** The listener on `signal`, while installed. */
  onAbort: (() => void) | undefined = undefined;

  constructor(
    readonly deadline: number,
    readonly signal: AbortSignal | undefined,
    readonly resolve: () => void,
    readonly reject: (err: unknown) => void,
  ) {}
}

/**
 * Holds exactly one access token and keeps it fresh (docs/behaviour.md, "Token lifecycle").
 *
 * - Renewal is scheduled at the earlier of `refreshAt × lifetime` and `expiry − minRemaining`.
 * - At most one token request is in flight, whatever the demand (`#renewal` is the single flight).
 * - A failed renewal is retried with exponential backoff and full jitter between `retry.min` and
 *   `retry.max`; the current token is served until it truly expires.
 * - The process never stops because of the token endpoint: every failure ends in a new timer.
 */
export class TokenManager {
  #held: Held | undefined;
  #renewal: Promise<void> | undefined;
  #timer: Timer | undefined;
  #expiryTimer: Timer | undefined;
  #failures = 0;
  /** Consecutive renewals caused by upstream 401s, and when the last one started. */
  #rejections = 0;
  #lastRejectionAt = 0;
  #stopped = false;
  /** Why the next token request is made, when not simply scheduled (or the first one). */
  #cause: RenewalCause | undefined;
  readonly #audit: Audit;
  /** Requests waiting for a token, by deadline; at its deadline one gets `TokenUnavailableError`. */
  readonly #waiters: Deadlines<Waiter>;
  readonly #random: () => number;

  readonly #deps: TokenManagerDeps;

  constructor(deps: TokenManagerDeps) {
    this.#deps = deps;
    this.#random = deps.random ?? Math.random;
    this.#audit = deps.audit ?? new Audit(deps.logger, DEFAULT_ROUTE);
    this.#waiters = new Deadlines(deps.clock, (waiter) =>
      this.#reject(waiter, new TokenUnavailableError()),
    );
  }

  /** Fetches the first token in the background. */
  start(): void {
    void this.renew();
  }

  /** The token to send, if one is held and has not expired. */
  current(): Secret | undefined {
    const held = this.#held;
    return held && held.expiresAt > this.#deps.clock.now() ? held.token : undefined;
  }

  /** Expiry (clock ms) of the token held, `undefined` when none. */
  get expiresAt(): number | undefined {
    return this.#held?.expiresAt;
  }

  /**
   * Resolves once a valid token is held. Rejects with `TokenUnavailableError` at
   * `deadline`, or with the signal's reason when the client goes away.
   */
  waitForToken(deadline: number, signal?: AbortSignal): Promise<void> {
    if (this.current()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const waiter = new Waiter(deadline, signal, resolve, reject);
      if (signal) this.#listen(waiter, signal);
      this.#waiters.add(waiter);
    });
  }

  /** Made apart from `waitForToken` so that the closure holds only what it needs. */
  #listen(waiter: Waiter, signal: AbortSignal): void {
    waiter.onAbort = () => {
      this.#waiters.delete(waiter);
      this.#reject(waiter, signal.reason);
    };
    signal.addEventListener('abort', waiter.onAbort, { once: true });
  }

  /** Removes the waiter's abort listener; it has left `#waiters` and is about to settle. */
  #unlisten(waiter: Waiter): void {
    if (waiter.onAbort === undefined) return;
    waiter.signal?.removeEventListener('abort', waiter.onAbort);
    waiter.onAbort = undefined;
  }

  #reject(waiter: Waiter, err: unknown): void {
    this.#unlisten(waiter);
    waiter.reject(err);
  }

  /**
   * Whether a 401 the upstream gave to `rejected` is worth a renewal and a replay. Yes when a
   * newer token exists or a renewal is in flight. When `rejected` is still the current token,
   * renewals caused by 401s back off like failed renewals (`retry.min`, doubling up to
   * `retry.max`, reset by the next scheduled renewal): an API that keeps answering 401 to fresh
   * tokens (a wrong audience or scope) must not turn into one token request per API request.
   */
  shouldRenewAfterRejection(rejected: Secret): boolean {
    if (this.#renewal || this.#held?.token !== rejected) return true;
    // A token that worked and is now refused was revoked: renew at once, whatever came before.
    if (this.#rejections === 0 || this.#held.accepted) return true;
    const { min, max } = this.#deps.config.retry;
    const wait = backoffCeiling(this.#rejections - 1, min, max);
    return this.#deps.clock.now() - this.#lastRejectionAt >= wait;
  }

  /**
   * The upstream answered 401 to `rejected`. Renews once however many requests saw that 401:
   * only the first caller whose token is still the current one starts a renewal; the others join
   * it, and callers after it find a newer token and return at once.
   */
  async renewAfterRejection(rejected: Secret): Promise<void> {
    if (this.#renewal) return this.#renewal;
    if (this.#held?.token !== rejected || !this.shouldRenewAfterRejection(rejected)) return;
    // Only 401s to tokens never accepted count towards the backoff.
    if (this.#held.accepted) this.#rejections = 0;
    this.#rejections += 1;
    this.#lastRejectionAt = this.#deps.clock.now();
    this.#audit.tokenRejectedByUpstream(rejected.reveal(), this.#rejections);
    this.#cause = 'upstream_rejected';
    return this.renew(true);
  }

  /**
   * The upstream answered `token` with something other than 401: it works. A later 401 to it
   * means it was revoked, and is renewed at once (docs/behaviour.md, "Token lifecycle").
   */
  accepted(token: Secret): void {
    const held = this.#held;
    if (held !== undefined && held.token === token) held.accepted = true;
  }

  /** The credentials changed: renew at once with the new ones. */
  credentialsChanged(): void {
    this.#failures = 0;
    const renew = () => {
      this.#cause = 'credentials_changed';
      void this.renew();
    };
    // A renewal in flight still uses the old credentials: renew again after it.
    if (this.#renewal) void this.#renewal.then(renew);
    else renew();
  }

  /**
   * Starts a renewal unless one is in flight; resolves when it ends (it never rejects).
   * `afterRejection` marks renewals caused by a 401, which do not reset the 401 backoff.
   */
  renew(afterRejection = false): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    if (!afterRejection) this.#rejections = 0;
    this.#renewal ??= this.#fetch().finally(() => {
      this.#renewal = undefined;
    });
    return this.#renewal;
  }

  /** Cancels timers; waiters get `TokenUnavailableError`. */
  stop(): void {
    this.#stopped = true;
    this.#clear();
    if (this.#expiryTimer) this.#deps.clock.clearTimeout(this.#expiryTimer);
    for (const w of this.#waiters.drain()) this.#reject(w, new TokenUnavailableError());
  }

  async #fetch(): Promise<void> {
    const { clock, config, metrics, logger } = this.#deps;
    this.#clear();
    // The lifetime counts from when the request was sent: the safe side of the network delay.
    const sentAt = clock.now();
    const cause = this.#cause ?? (this.#held ? 'scheduled' : 'initial');
    this.#cause = undefined;
    const observed = this.#deps.renewals?.renewalStarted(cause);
    const credentials = this.#deps.credentials();
    let issued: IssuedToken;
    try {
      issued = await this.#deps.source.requestToken(credentials);
    } catch (err) {
      const e = asTokenRequestError(err);
      observed?.failed(e.reason, e.status);
      this.#failed(e, credentials);
      return;
    }
    observed?.succeeded();
    if (this.#stopped) return;
    const lifetime = issued.lifetimeMs ?? DEFAULT_LIFETIME_MS;
    const expiresAt = sentAt + lifetime;
    this.#held = { token: issued.accessToken, expiresAt, accepted: false };
    this.#failures = 0;
    metrics.tokenRefreshes.inc({ result: 'success' });
    metrics.tokenExpiry.set(expiresAt / 1000);
    this.#audit.tokenIssued({
      clientId: clientIdOf(credentials),
      scope: issued.scope ?? config.scope,
      audience: config.audience ?? config.resource,
      expiresAt,
      token: issued.accessToken.reveal(),
    });
    const renewIn =
      renewalDelay(lifetime, config.refreshAt, config.minRemaining) - (clock.now() - sentAt);
    logger.info({
      event: 'token_renewed',
      expiresInSeconds: Math.round(lifetime / 1000),
      lifetimeFrom: issued.lifetimeMs === undefined ? 'default' : 'response',
      nextRenewalInSeconds: Math.round(Math.max(0, renewIn) / 1000),
    });
    this.#timer = this.#unref(clock.setTimeout(() => void this.renew(), Math.max(0, renewIn)));
    this.#armExpiry(expiresAt);
    for (const w of this.#waiters.drain()) {
      this.#unlisten(w);
      w.resolve();
    }
  }

  #failed(e: TokenRequestError, credentials: ClientCredentials): void {
    const { clock, config, metrics } = this.#deps;
    metrics.tokenRefreshes.inc({ result: 'failure' });
    metrics.tokenRefreshFailures.inc({ reason: e.reason });
    this.#failures += 1;
    const delay = backoffDelay(this.#failures, config.retry.min, config.retry.max, this.#random);
    const held = this.#held;
    this.#audit.tokenRenewalFailed(clientIdOf(credentials), {
      reason: e.reason,
      status: e.status,
      error: e.oauthError,
      error_description: e.oauthErrorDescription,
      message: e.message,
      endpoint: displayUrl(config.url),
      attempt: this.#failures,
      retryInMs: Math.round(delay),
      currentTokenValidForSeconds: held
        ? Math.max(0, Math.round((held.expiresAt - clock.now()) / 1000))
        : 0,
    });
    if (!this.#stopped) this.#timer = this.#unref(clock.setTimeout(() => void this.renew(), delay));
  }

  #armExpiry(expiresAt: number): void {
    const { clock } = this.#deps;
    if (this.#expiryTimer) clock.clearTimeout(this.#expiryTimer);
    this.#expiryTimer = this.#unref(
      clock.setTimeout(() => {
        if (this.#held?.expiresAt !== expiresAt) return;
        this.#deps.metrics.tokenExpiry.set(0);
        this.#deps.logger.error(
          { event: 'token_expired' },
          'no valid token: requests wait for a renewal',
        );
      }, expiresAt - clock.now()),
    );
  }

  #clear(): void {
    if (this.#timer) this.#deps.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #unref(timer: Timer): Timer {
    timer.unref?.();
    return timer;
  }
}

/**
 * When to renew a token of `lifetime` ms: the earlier of `refreshAt × lifetime` and
 * `lifetime − minRemaining`. When the token lives shorter than `minRemaining` the second rule
 * would ask for a renewal at once, forever; then only the first applies.
 */
export function renewalDelay(lifetime: number, refreshAt: number, minRemaining: number): number {
  const byShare = refreshAt * lifetime;
  const byMargin = lifetime - minRemaining;
  return byMargin > 0 ? Math.min(byShare, byMargin) : byShare;
}

/**
 * Exponential backoff with full jitter (as in the AWS architecture blog's "Exponential Backoff
 * and Jitter"), floored at `min`: attempt n waits a uniform time in [min, min(max, min × 2ⁿ)].
 */
export function backoffDelay(
  attempt: number,
  min: number,
  max: number,
  random: () => number,
): number {
  return min + random() * (backoffCeiling(attempt, min, max) - min);
}

/** A failure of the token source as a `TokenRequestError` (anything unexpected counts as `network`). */
function asTokenRequestError(err: unknown): TokenRequestError {
  return err instanceof TokenRequestError
    ? err
    : new TokenRequestError(
        'network',
        `token request failed: ${err instanceof Error ? err.message : String(err)}`,
      );
}

/** The longest wait of attempt n: `min × 2ⁿ`, capped at `max` (the exponent too, against overflow). */

function backoffCeiling(attempt: number, min: number, max: number): number {
  return Math.min(max, min * 2 ** Math.min(attempt, 30));
}
