import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ConfigError } from '../config/load.js';

/**
 * Reads `upstream.caFile` and checks that it is a PEM bundle of certificates Node can parse:
 * `--check` and start-up refuse a missing or wrong file instead of failing at the first request.
 * Throws a `ConfigError` naming the key and the file.
 */
export function readCaFile(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError([
      `upstream.caFile: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
    ]);
  }
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  try {
    if (blocks.length === 0) throw new Error('no certificate');
    for (const block of blocks) new X509Certificate(block);
  } catch {
    throw new ConfigError([`upstream.caFile: ${file} is not a PEM bundle of certificates`]);
  }
  return text;
}
