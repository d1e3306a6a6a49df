import type { ReadinessReason } from './server.js';

/** What readiness needs to know of one route (its token manager and handler, seen narrowly). */
export interface RouteReadiness {
  readonly name: string;
  /** The route's handler is draining (SIGTERM). */
  readonly shuttingDown: boolean;
  /** A valid token is held now. */
  hasToken(): boolean;
  /** When the last token expires(d), clock ms; `undefined` before the first one. */
  readonly tokenExpiresAt: number | undefined;
}

/**
 * Why the proxy is not ready, or `undefined` when every route holds a valid token: the whole
 * sidecar is one pod's readiness, and an application calling a route without a token would get
 * 503s. One route's reason is a string; several are named route by route (docs/behaviour.md,
 * "Admin port").
 */
export function notReady(routes: readonly RouteReadiness[]): ReadinessReason | undefined {
  if (routes.some((r) => r.shuttingDown)) return 'shutting_down';
  const reasons: Record<string, string> = {};
  for (const route of routes) {
    if (route.hasToken()) continue;
    reasons[route.name] = route.tokenExpiresAt === undefined ? 'no_token_yet' : 'token_expired';
  }
  const names = Object.keys(reasons);
  if (names.length === 0) return undefined;
  return {
    reason: names.length === 1 ? (reasons[names[0] as string] as string) : 'routes_not_ready',
    routes: reasons,
  };
}
