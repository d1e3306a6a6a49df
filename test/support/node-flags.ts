import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/**
 * The node flags the image starts the proxy with: the arguments between `node` and
 * `dist/main.js` in the Dockerfile's ENTRYPOINT. Tests and the bench start the proxy with the
 * same flags, so what they measure and check is what the image runs.
 */
export function imageNodeFlags(dockerfile = join(repoRoot, 'Dockerfile')): string[] {
  const text = readFileSync(dockerfile, 'utf8');
  const m = /^ENTRYPOINT\s+(\[.*\])\s*$/m.exec(text);
  if (!m?.[1]) throw new Error(`${dockerfile}: no exec-form ENTRYPOINT`);
  const argv = JSON.parse(m[1]) as string[];
  const main = argv.indexOf('dist/main.js');
  if (main < 1) throw new Error(`${dockerfile}: ENTRYPOINT does not run dist/main.js`);
  return argv.slice(1, main);
}
