import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fallbackLimits, readRedisPassword } from '../../../src/pacing/shared-store.js';

const rateLimit = (perSecond: number, burst: number, max: number) => ({
  perSecond,
  burst,
  window: { max, length: 300_000 },
  queue: { max: 1000, timeout: 30_000 },
});

describe('fallback limits', () => {
  it('scales the contract defaults by the fallback share, rounding counts down', () => {
    expect(fallbackLimits(rateLimit(6, 1, 2000), 0.25)).toEqual({
      perSecond: 1.5,
      burst: 1,
      windowMax: 500,
      windowMs: 300_000,
    });
    expect(fallbackLimits(rateLimit(10, 7, 999), 0.5)).toMatchObject({ burst: 3, windowMax: 499 });
  });

  it('never scales an active limit to zero, and leaves a limit that is off off', () => {
    expect(fallbackLimits(rateLimit(6, 1, 3), 0.1)).toMatchObject({ burst: 1, windowMax: 1 });
    expect(fallbackLimits(rateLimit(0, 1, 0), 0.25)).toMatchObject({ perSecond: 0, windowMax: 0 });
  });
});

describe('Redis password file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'm2m-pw-'));

  it('drops one trailing newline and keeps everything else', () => {
    const file = join(dir, 'a');
    writeFileSync(file, ' p@ss word \r\n');
    expect(readRedisPassword(file)).toBe(' p@ss word ');
  });

  it('names the file, not its contents, when it cannot be used', () => {
    const empty = join(dir, 'empty');
    writeFileSync(empty, '\n');
    expect(() => readRedisPassword(empty)).toThrow(
      `rateLimit.shared.passwordFile: ${empty} is empty`,
    );
    expect(() => readRedisPassword(join(dir, 'missing'))).toThrow(
      /cannot read .*missing \(ENOENT\)/,
    );
  });
});
