import { resolve } from 'node:path';
import { Secret } from '../credentials/secret.js';

/** The process environment as the configuration reads it. */
export type EnvironmentVariables = Readonly<Record<string, string | undefined>>;

/** The file read when neither `--config` nor `M2M_PROXY_CONFIG` names one (docs/configuration.md). */
const DEFAULT_CONFIG_FILE = 'config/m2m-proxy.yaml';

/**
 * The client credentials from `M2M_PROXY_CLIENT_ID` and `M2M_PROXY_CLIENT_SECRET`, used when the
 * token block names no credential file (docs/configuration.md).
 */
export interface EnvCredentials {
  readonly clientId: string;
  readonly clientSecret: Secret;
}

/**
 * The configuration file: `--config`, else `M2M_PROXY_CONFIG`, else the default, as an absolute
 * path (messages name it that way).
 */
export function configFile(flag: string | undefined, env: EnvironmentVariables): string {
  return resolve(flag ?? env.M2M_PROXY_CONFIG ?? DEFAULT_CONFIG_FILE);
}

/**
 * `M2M_PROXY_CLIENT_ID` and `M2M_PROXY_CLIENT_SECRET`, trimmed; `undefined` unless both are set
 * and non-empty. Read once at start-up: the rest of the code receives the result, never the
 * environment.
 */
export function envCredentials(env: EnvironmentVariables): EnvCredentials | undefined {
  const clientId = env.M2M_PROXY_CLIENT_ID?.trim();
  const secret = env.M2M_PROXY_CLIENT_SECRET?.trim();
  return clientId && secret ? { clientId, clientSecret: new Secret(secret) } : undefined;
}
