import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const defaultDockerfile = join(repoRoot, 'Dockerfile');

/** Flags of the ENTRYPOINT, per node binary: whether that node accepts each. */
const accepted = new Map<string, boolean>();

/** Whether `node` starts with `flag` (V8 flags differ between Node versions). */
function accepts(node: string, flag: string): boolean {
  const key = `${node}\0${flag}`;
  let ok = accepted.get(key);
  if (ok === undefined) {
    ok = spawnSync(node, [flag, '-e', ''], { stdio: 'ignore' }).status === 0;
    accepted.set(key, ok);
  }
  return ok;
}

/**
 * The node flags the image starts the proxy with: the arguments between `node` and
 * `dist/main.js` in the Dockerfile's ENTRYPOINT. Tests and the bench start the proxy with the
 * same flags, so what they measure and check is what the image runs. The image runs Node 24;
 * on another Node (the tests also run on Node 20) a flag that this node does not know is left
 * out, as that node would refuse to start with it: `node` says which binary (default: the one
 * running the tests).
 */
export function imageNodeFlags(
  dockerfile = defaultDockerfile,
  node: string = process.execPath,
): string[] {
  const text = readFileSync(dockerfile, 'utf8');
  const m = /^ENTRYPOINT\s+(\[.*\])\s*$/m.exec(text);
  if (!m?.[1]) throw new Error(`${dockerfile}: no exec-form ENTRYPOINT`);
  const argv = JSON.parse(m[1]) as string[];
  const main = argv.indexOf('dist/main.js');
  if (main < 1) throw new Error(`${dockerfile}: ENTRYPOINT does not run dist/main.js`);
  return argv.slice(1, main).filter((flag) => accepts(node, flag));
}

/**
 * The C library settings of the image's ENV (`MALLOC_*`, `GLIBC_TUNABLES`), for the tests and
 * the bench to run the proxy with. The other ENV keys (`NODE_ENV`, the config path) are the
 * image's defaults for a user and are left to each test.
 */
export function imageRuntimeEnv(dockerfile = defaultDockerfile): Record<string, string> {
  const text = readFileSync(dockerfile, 'utf8').replace(/\\\n/g, ' ');
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^ENV\s+(.*)$/.exec(line.trim());
    if (!m?.[1]) continue;
    for (const [, key, value] of m[1].matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)/g)) {
      if (key && value && /^(MALLOC_|GLIBC_TUNABLES$)/.test(key)) {
        env[key] = value.replace(/^"(.*)"$/, '$1');
      }
    }
  }
  return env;
}
