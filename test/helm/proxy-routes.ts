import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/load.js';

let readsRoutes: Promise<boolean> | undefined;

/** True when a configuration error lists `routes` as an unknown key. */
export function refusesRoutes(err: unknown): boolean {
  const problems = (err as { problems?: readonly string[] }).problems ?? [];
  return problems.some((p) => /: routes: unknown key/.test(p));
}

/**
 * Whether this build of the proxy knows `routes` (the chart may land before the proxy does): a
 * proxy without them refuses a configuration with routes with "routes: unknown key".
 */
export function proxyReadsRoutes(): Promise<boolean> {
  readsRoutes ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'm2m-proxy-routes-'));
    try {
      const path = join(dir, 'm2m-proxy.yaml');
      writeFileSync(path, 'routes: []\n');
      await loadConfig(path, {});
      return true;
    } catch (err) {
      return !refusesRoutes(err);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  })();
  return readsRoutes;
}
