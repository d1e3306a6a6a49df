import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { request } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandomChunks, pseudoRandomSha256 } from '../../fixtures/upstream.js';
import { startWorld, type World } from './world.js';

const SIZE = 200 * 1024 * 1024;
/**
 * Buffering the body would add 200 MB. Streaming holds only socket and stream buffers, but the
 * chunks that passed through are garbage until V8 collects them, and V8 starts a collection for
 * external (Buffer) memory at 64 MB (its external allocation soft limit): on a loaded CI machine
 * the peak reaches 50-odd MB (14 MB when idle). 64 MB keeps a wide margin to 200.
 */
const FLAT = 64 * 1024 * 1024;

/** Resident set size of a process, from /proc (Linux), in bytes. */
async function rss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /VmRSS:\s+(\d+) kB/.exec(status)?.[1];
  if (!kb) throw new Error('no VmRSS');
  return Number(kb) * 1024;
}

/** Samples the proxy's RSS every 50 ms while `work` runs; returns the peak. */
async function peakRss<T>(
  pid: number,
  work: () => Promise<T>,
): Promise<{ result: T; peak: number }> {
  let peak = await rss(pid);
  const timer = setInterval(() => {
    rss(pid).then(
      (v) => {
        peak = Math.max(peak, v);
      },
      () => {},
    );
  }, 50);
  try {
    return { result: await work(), peak };
  } finally {
    clearInterval(timer);
  }
}

describe('streaming', () => {
  let world: World;
  let baseline: number;
  beforeAll(async () => {
    world = await startWorld({ proxy: { upstream: { timeout: '60s' } } });
    // Warm up so the baseline includes the token, the pools and JIT-compiled paths.
    for (let i = 0; i < 20; i++)
      await (await fetch(`${world.proxy.url}/download?bytes=1048576`)).arrayBuffer();
    baseline = await rss(world.proxy.pid);
  });
  afterAll(() => world?.close());

  it('streams a 200 MB upload through with the memory staying flat', async () => {
    const { result, peak } = await peakRss(world.proxy.pid, async () => {
      const body = await new Promise<string>((resolve, reject) => {
        const req = request(`${world.proxy.url}/upload`, {
          method: 'POST',
          headers: { 'content-length': String(SIZE), 'content-type': 'application/octet-stream' },
        });
        req.on('response', (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => {
            text += d;
          });
          res.on('end', () => resolve(text));
        });
        req.on('error', reject);
        pipeline(Readable.from(pseudoRandomChunks(SIZE)), req).catch(reject);
      });
      return JSON.parse(body) as { bytes: number; sha256: string };
    });
    expect(result).toEqual({ bytes: SIZE, sha256: pseudoRandomSha256(SIZE) });
    console.info(
      `200 MB upload: proxy RSS +${((peak - baseline) / 2 ** 20).toFixed(1)} MB over ${(baseline / 2 ** 20).toFixed(1)} MB`,
    );
    expect(peak - baseline).toBeLessThan(FLAT);
  });

  it('streams a 200 MB download through with the memory staying flat', async () => {
    const { result, peak } = await peakRss(world.proxy.pid, async () => {
      const res = await fetch(`${world.proxy.url}/download?bytes=${SIZE}`);
      expect(res.status).toBe(200);
      const hash = createHash('sha256');
      let bytes = 0;
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        hash.update(chunk);
        bytes += chunk.length;
      }
      return { bytes, sha256: hash.digest('hex'), expected: res.headers.get('x-content-sha256') };
    });
    expect(result.bytes).toBe(SIZE);
    expect(result.sha256).toBe(pseudoRandomSha256(SIZE));
    expect(result.expected).toBe(result.sha256);
    console.info(
      `200 MB download: proxy RSS +${((peak - baseline) / 2 ** 20).toFixed(1)} MB over ${(baseline / 2 ** 20).toFixed(1)} MB`,
    );
    expect(peak - baseline).toBeLessThan(FLAT);
  });
});
