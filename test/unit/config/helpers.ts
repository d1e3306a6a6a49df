/** Shared by the configuration tests: a file to load, and the problems a refused one reports. */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { ConfigError, loadConfig } from '../../../src/config/load.js';

/** Writes `text` to a fresh `m2m-proxy.yaml` and returns its path. */
export async function configFile(text: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'm2m-config-'));
  const file = join(dir, 'm2m-proxy.yaml');
  await writeFile(file, text);
  return file;
}

/** The problems of a configuration that must be refused, with its path written `FILE`. */
export async function problems(
  text: string,
  env: Record<string, string> = {},
): Promise<readonly string[]> {
  const file = await configFile(text);
  try {
    await loadConfig(file, env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems.map((p) => p.replace(file, 'FILE'));
  }
  throw new Error('expected the configuration to be refused');
}
