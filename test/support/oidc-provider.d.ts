/**
 * The part of `oidc-provider`'s API that the test IdP uses. The package ships no types and
 * `@types/oidc-provider` lags behind v9, so this declares only what `idp.ts` calls.
 */
declare module 'oidc-provider' {
  import type { IncomingMessage, ServerResponse } from 'node:http';

  /** Storage for one model (`Client`, `AccessToken`, `ReplayDetection`, ...). */
  export interface Adapter {
    upsert(id: string, payload: Record<string, unknown>, expiresIn?: number): Promise<void>;
    find(id: string): Promise<Record<string, unknown> | undefined>;
    findByUid(uid: string): Promise<Record<string, unknown> | undefined>;
    findByUserCode(userCode: string): Promise<Record<string, unknown> | undefined>;
    consume(id: string): Promise<void>;
    destroy(id: string): Promise<void>;
    revokeByGrantId(grantId: string): Promise<void>;
  }

  /** Configuration keys are many and nested; the IdP builds them literally. */
  export type Configuration = Record<string, unknown>;

  export default class Provider {
    constructor(issuer: string, configuration?: Configuration);
    /** Koa's `proxy` flag: trust `X-Forwarded-*` headers. */
    proxy: boolean;
    /** Koa's request listener for `node:http`. */
    callback(): (req: IncomingMessage, res: ServerResponse) => void;
    on(event: string, listener: (...args: unknown[]) => void): this;
  }
}
