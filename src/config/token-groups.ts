import type { Config, RouteConfig } from './config.js';

/** Routes whose token blocks are equal: they share one `TokenManager`, so one token request. */
export interface TokenGroup {
  /** The token block, as every route of the group has it. */
  readonly token: RouteConfig['token'];
  /** Identifies the group (the credentials read at start-up are keyed by it). */
  readonly key: string;
  readonly routes: readonly RouteConfig[];
}

/**
 * Groups the routes by token block. Equal means equal after defaults, key by key (endpoint,
 * method, credential files, scope, audience, resource, params and the renewal settings): two
 * blocks that differ in anything get separate tokens, however similar.
 */
export function tokenGroups(config: Config): TokenGroup[] {
  const groups = new Map<
    string,
    { token: RouteConfig['token']; key: string; routes: RouteConfig[] }
  >();
  for (const route of config.routes) {
    const key = JSON.stringify(route.token);
    const group = groups.get(key);
    if (group) group.routes.push(route);
    else groups.set(key, { token: route.token, key, routes: [route] });
  }
  return [...groups.values()];
}
