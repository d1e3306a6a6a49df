import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { imageNodeFlags, imageRuntimeEnv } from '../../fixtures/node-flags.js';

const dir = mkdtempSync(join(tmpdir(), 'm2m-node-flags-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function dockerfile(text: string): string {
  const file = join(dir, `Dockerfile-${Math.random().toString(36).slice(2)}`);
  writeFileSync(file, text);
  return file;
}

describe('the image settings the tests and the bench run the proxy with', () => {
  it('takes the ENTRYPOINT flags this node accepts and leaves out the ones it refuses', () => {
    const file = dockerfile(
      'FROM x\nENTRYPOINT ["/nodejs/bin/node", "--max-semi-space-size=1", "--no-such-v8-flag-m2m", "dist/m2m-proxy.cjs"]\n',
    );
    expect(imageNodeFlags(file)).toEqual(['--max-semi-space-size=1']);
  });

  it("reads the repository's Dockerfile: its semi-space flag is kept on every Node", () => {
    expect(imageNodeFlags()).toContain('--max-semi-space-size=1');
  });

  it('refuses a Dockerfile whose ENTRYPOINT does not run the bundle', () => {
    const file = dockerfile('FROM x\nENTRYPOINT ["/nodejs/bin/node", "other.js"]\n');
    expect(() => imageNodeFlags(file)).toThrow(/does not run dist\/m2m-proxy\.cjs/);
  });

  it('takes the C library settings from ENV, across continuation lines, and nothing else', () => {
    const file = dockerfile(
      'FROM x\nENV NODE_ENV=production \\\n    MALLOC_ARENA_MAX=2 \\\n    GLIBC_TUNABLES="glibc.malloc.trim_threshold=1"\nENTRYPOINT ["node", "dist/m2m-proxy.cjs"]\n',
    );
    expect(imageRuntimeEnv(file)).toEqual({
      MALLOC_ARENA_MAX: '2',
      GLIBC_TUNABLES: 'glibc.malloc.trim_threshold=1',
    });
    expect(imageRuntimeEnv()).toEqual({ MALLOC_ARENA_MAX: '2', MALLOC_TRIM_THRESHOLD_: '131072' });
  });
});
