import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readRedisPassword } from '../../../src/credentials/credentials.js';

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
