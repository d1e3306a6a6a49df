import { createHash } from 'node:crypto';
import { type ClientCredentials, splitBasic } from '../credentials/credentials.js';
import type { Logger } from './logger.js';

/**
 * The first 12 hex digits of the SHA-256 of `value`: enough to match a token in the API's logs
 * (or a credential file's content with `sha256sum`) to its audit line, far too little to
 * recover or use the value. 48 bits: two different tokens of one deployment share a fingerprint
 * with a probability around 2⁻⁴⁸ per pair.
 */
export function fingerprint(value: string | Buffer): string {
  return createHash('sha256').update(value).digest('hex').slice(0, 12);
}

/** What `token_issued` records: who got a token, for what, until when (docs/tracing.md). */
export interface TokenIssued {
  clientId: string;
  /** The scope the provider granted when it said, else the one requested; `null` when neither. */
  scope: string | undefined;
  /** `token.audience` (else `token.resource`) as requested; `null` when neither is configured. */
  audience: string | undefined;
  /** Clock ms at which the proxy stops using the token. */
  expiresAt: number;
  /** The access token itself: only its fingerprint is written. */
  token: string;
}

/** What `token_renewal_failed` records besides the route and client. */
export interface RenewalFailed {
  reason: string;
  status: number | undefined;
  error: string | undefined;
  error_description: string | undefined;
  message: string;
  endpoint: string;
  attempt: number;
  retryInMs: number;
  currentTokenValidForSeconds: number;
}

/**
 * The audit trail (docs/tracing.md, "Audit events"): one JSON line per security-relevant event,
 * each with `"audit": true`, an `event` name and the `route`, always written whatever
 * `log.level` says (a child logger at `info` at least). Every field is present in every line of
 * an event (`null` when unknown) so a SIEM can rely on the schema. Nothing here ever receives a
 * credential or a token except to fingerprint it.
 */
export class Audit {
  readonly #log: Logger;

  constructor(
    logger: Logger,
    readonly route: string,
  ) {
    // `log.level: warn` (or `silent`) quietens the operational lines, not the audit trail.
    const level = logger.levelVal <= 30 ? logger.level : 'info';
    this.#log = logger.child({ audit: true, route }, { level });
  }

  /** A token was obtained; `clientId`, scope, audience and expiry, and the token's fingerprint. */
  tokenIssued(t: TokenIssued): void {
    this.#log.info({
      event: 'token_issued',
      clientId: t.clientId,
      scope: t.scope ?? null,
      audience: t.audience ?? null,
      expiresAt: new Date(t.expiresAt).toISOString(),
      fingerprint: fingerprint(t.token),
    });
  }

  /** A token request failed (the current token, if any, keeps being used until it expires). */
  tokenRenewalFailed(clientId: string | undefined, f: RenewalFailed): void {
    this.#log.warn({
      event: 'token_renewal_failed',
      clientId: clientId ?? null,
      reason: f.reason,
      status: f.status ?? null,
      error: f.error ?? null,
      error_description: f.error_description ?? null,
      message: f.message,
      endpoint: f.endpoint,
      attempt: f.attempt,
      retryInMs: f.retryInMs,
      currentTokenValidForSeconds: f.currentTokenValidForSeconds,
    });
  }

  /** The upstream answered 401 to a token: a renewal starts (`consecutive` such renewals). */
  tokenRejectedByUpstream(token: string, consecutive: number): void {
    this.#log.info({
      event: 'token_rejected_by_upstream',
      fingerprint: fingerprint(token),
      consecutive,
    });
  }

  /**
   * A credential file's content changed (`file` = its path; `null` for credentials from the
   * environment) and the next renewal uses it; `contentFingerprint` = `fingerprint(content)`.
   */
  credentialsChanged(file: string | undefined, contentFingerprint: string | undefined): void {
    this.#log.info({
      event: 'credentials_changed',
      file: file ?? null,
      fingerprint: contentFingerprint ?? null,
    });
  }

  /** The shared budget (Redis) became unreachable: this replica paces alone at its share. */
  sharedBudgetLost(key: string, reason: string): void {
    this.#log.warn({ event: 'shared_budget_lost', key, reason });
  }

  /** The shared budget answers again: this replica paces with the fleet. */
  sharedBudgetRestored(key: string): void {
    this.#log.info({ event: 'shared_budget_restored', key });
  }
}

/** The client id of credentials in any form (an `authorizationFile` holds it base64-encoded). */
export function clientIdOf(credentials: ClientCredentials): string {
  return credentials.kind === 'authorization'
    ? splitBasic(credentials.authorization).clientId
    : credentials.clientId;
}
