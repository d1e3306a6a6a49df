/**
 * What a running proxy keeps loaded. Every Node.js module it loads stays resident for the life
 * of the process, so the ones it never uses are kept out (docs/benchmarks.md, "Memory
 * footprint"): undici's HTTP/2 module (with TLS and https), prom-client's Pushgateway (https,
 * zlib), and the promise-based file API (with readline).
 */
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TempDir, tempDir } from '../../fixtures/process.js';
import { startWorld } from './world.js';

const NOT_LOADED = ['http2', 'https', 'tls', 'zlib', 'internal/fs/promises'];

describe('the Node.js modules a running proxy has loaded', () => {
  let dir: TempDir;
  let loaded: string[];
  beforeAll(async () => {
    dir = await tempDir();
    const list = `${dir.path}/loaded.txt`;
    // Written when the proxy exits, after it has proxied, renewed and been scraped.
    const preload = await dir.write(
      'loaded.cjs',
      `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(list)}, process.moduleLoadList.join('\\n')));\n`,
    );
    const world = await startWorld({ env: { NODE_OPTIONS: `--require ${preload}` } });
    try {
      expect((await fetch(`${world.proxy.url}/api/v1/things`)).status).toBe(200);
      expect((await fetch(`${world.proxy.adminUrl}/metrics`)).status).toBe(200);
      expect(await world.proxy.stop()).toBe(0);
    } finally {
      await world.close();
    }
    loaded = (await readFile(list, 'utf8')).split('\n');
  });
  afterAll(() => dir?.remove());

  it('holds the modules it serves with', () => {
    expect(loaded).toContain('NativeModule http');
    expect(loaded).toContain('NativeModule crypto'); // the audit trail's fingerprints
  });

  it.each(NOT_LOADED)('has not loaded %s', (name) => {
    expect(loaded).not.toContain(`NativeModule ${name}`);
  });
});
