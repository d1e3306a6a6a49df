import { createPrivateKey, type KeyObject } from 'node:crypto';
import { readFile as readFileCallback, readFileSync, statSync } from 'node:fs';
import { promisify } from 'node:util';
import type { RouteConfig } from '../config/config.js';
import type { EnvCredentials } from '../config/environment.js';
import { M2mError } from '../errors.js';
import { Secret } from './secret.js';

// Not node:fs/promises: that module brings Node's readline and REPL history code with it
// (≈ 0.5 MB resident for the life of the process, docs/benchmarks.md) for one file read.
const readFile = promisify(readFileCallback);

/** The client's credentials, in one of the contract's three forms. */
export type ClientCredentials =
  /** `authorizationFile`: a ready `Basic base64(id:secret)` header value, sent as given. */
  | { readonly kind: 'authorization'; readonly authorization: Secret }
  /** `clientIdFile` + `clientSecretFile`, or `M2M_PROXY_CLIENT_ID` + `M2M_PROXY_CLIENT_SECRET`. */
  | { readonly kind: 'secret'; readonly clientId: string; readonly clientSecret: Secret }
  /** `clientIdFile` + `privateKeyFile` (+ `keyId`) for `private_key_jwt` (RFC 7523). */
  | {
      readonly kind: 'private_key';
      readonly clientId: string;
      readonly key: KeyObject;
      readonly alg: string;
      readonly keyId?: string;
      /** The PEM, to tell whether a re-read file changed. */
      readonly pem: Secret;
    };

/**
 * Credentials could not be read or are malformed. `problems` has one line per file (all of them,
 * not only the first); each names the key and the file, never its content.
 */
export class CredentialError extends M2mError {
  readonly code = 'invalid_credentials';
  readonly problems: readonly string[];
  constructor(problems: string | readonly string[]) {
    const list = typeof problems === 'string' ? [problems] : problems;
    super(list.join('\n'));
    this.problems = list;
  }
}

/** Runs each read; returns their values, or throws one `CredentialError` with every problem. */
async function all<T extends unknown[]>(...reads: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const settled = await Promise.allSettled(reads);
  const problems: string[] = [];
  for (const r of settled) {
    if (r.status === 'fulfilled') continue;
    if (r.reason instanceof CredentialError) problems.push(...r.reason.problems);
    else throw r.reason;
  }
  if (problems.length > 0) throw new CredentialError(problems);
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as T;
}

type CredentialsConfig = RouteConfig['token']['credentials'];

/** The files the credentials are read from (watched for Kubernetes secret rotation). */
export function credentialFiles(config: CredentialsConfig): string[] {
  return [
    config.authorizationFile,
    config.clientIdFile,
    config.clientSecretFile,
    config.privateKeyFile,
  ].filter((f): f is string => f !== undefined);
}

/**
 * Reads the credentials from the configured files, or takes `fromEnv` (`M2M_PROXY_CLIENT_ID` and
 * `M2M_PROXY_CLIENT_SECRET`, resolved by `envCredentials`) when no file is configured.
 * Surrounding whitespace is trimmed: secret files written with `echo` end in a newline that is
 * not part of the secret.
 */
export async function readCredentials(
  token: RouteConfig['token'],
  fromEnv: EnvCredentials | undefined,
): Promise<ClientCredentials> {
  const credentials = await readForm(token.credentials, fromEnv);
  if (token.authMethod === 'private_key_jwt' && credentials.kind !== 'private_key') {
    throw new CredentialError(
      'token.credentials: private_key_jwt needs clientIdFile + privateKeyFile',
    );
  }
  return credentials;
}

async function readForm(
  config: CredentialsConfig,
  fromEnv: EnvCredentials | undefined,
): Promise<ClientCredentials> {
  if (config.authorizationFile) {
    const value = await readSecretFile(
      config.authorizationFile,
      'token.credentials.authorizationFile',
    );
    return {
      kind: 'authorization',
      authorization: new Secret(normaliseAuthorization(value, config.authorizationFile)),
    };
  }
  if (config.clientIdFile && config.privateKeyFile) {
    const keyFile = config.privateKeyFile;
    const [clientId, [pem, { key, alg }]] = await all<[string, [string, PrivateKey]]>(
      readSecretFile(config.clientIdFile, 'token.credentials.clientIdFile'),
      readSecretFile(keyFile, 'token.credentials.privateKeyFile').then(
        (text) => [text, parsePrivateKey(text, keyFile)] as [string, PrivateKey],
      ),
    );
    return {
      kind: 'private_key',
      clientId,
      key,
      alg,
      pem: new Secret(pem),
      ...(config.keyId === undefined ? {} : { keyId: config.keyId }),
    };
  }
  if (config.clientIdFile && config.clientSecretFile) {
    const [clientId, secret] = await all<[string, string]>(
      readSecretFile(config.clientIdFile, 'token.credentials.clientIdFile'),
      readSecretFile(config.clientSecretFile, 'token.credentials.clientSecretFile'),
    );
    return { kind: 'secret', clientId, clientSecret: new Secret(secret) };
  }
  if (fromEnv) return { kind: 'secret', ...fromEnv };
  throw new CredentialError(
    'token.credentials: no credentials configured (set authorizationFile, clientIdFile + clientSecretFile, ' +
      'clientIdFile + privateKeyFile, or the M2M_PROXY_CLIENT_ID and M2M_PROXY_CLIENT_SECRET environment variables)',
  );
}

/** True when two reads hold the same credentials (nothing to renew). */
export function sameCredentials(a: ClientCredentials, b: ClientCredentials): boolean {
  switch (a.kind) {
    case 'authorization':
      return b.kind === 'authorization' && a.authorization.equals(b.authorization);
    case 'secret':
      return (
        b.kind === 'secret' && a.clientId === b.clientId && a.clientSecret.equals(b.clientSecret)
      );
    case 'private_key':
      return (
        b.kind === 'private_key' &&
        a.clientId === b.clientId &&
        a.keyId === b.keyId &&
        a.pem.equals(b.pem)
      );
  }
}

/** A summary safe to print (`--check`, start-up log): the form and the client id, no secret. */
export function describeCredentials(c: ClientCredentials): Record<string, string> {
  switch (c.kind) {
    case 'authorization':
      return { form: 'authorization header (authorizationFile)' };
    case 'secret':
      return { form: 'client id + secret', clientId: c.clientId };
    case 'private_key':
      return {
        form: 'client id + private key',
        clientId: c.clientId,
        alg: c.alg,
        ...(c.keyId ? { keyId: c.keyId } : {}),
      };
  }
}

/**
 * Splits an `Authorization: Basic` value into id and secret (for `client_secret_post` fed by an
 * `authorizationFile`). RFC 6749 §2.3.1 form-encodes both before base64, so they are decoded.
 */
export function splitBasic(authorization: Secret): { clientId: string; clientSecret: Secret } {
  const decoded = Buffer.from(authorization.reveal().slice('Basic '.length), 'base64').toString(
    'utf8',
  );
  const colon = decoded.indexOf(':');
  const formDecode = (s: string) => decodeURIComponent(s.replace(/\+/g, ' '));
  return {
    clientId: formDecode(decoded.slice(0, colon)),
    clientSecret: new Secret(formDecode(decoded.slice(colon + 1))),
  };
}

async function readSecretFile(file: string, key: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new CredentialError(
      `${key}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  }
  const value = text.trim();
  if (value === '') throw new CredentialError(`${key}: ${file} is empty`);
  return value;
}

/** Accepts `Basic <base64>` or the bare base64 part; checks it decodes to `id:secret`. */
function normaliseAuthorization(value: string, file: string): string {
  const match = /^(?:basic\s+)?([A-Za-z0-9+/=_-]+)$/i.exec(value);
  const b64 = match?.[1];
  const decoded = b64 ? Buffer.from(b64, 'base64').toString('utf8') : '';
  if (!b64 || decoded.indexOf(':') < 1) {
    throw new CredentialError(
      `token.credentials.authorizationFile: ${file} does not hold "Basic base64(id:secret)" or its base64 part`,
    );
  }
  return `Basic ${b64}`;
}

interface PrivateKey {
  key: KeyObject;
  alg: string;
}

/** The JWS algorithm follows from the key (RFC 7518 §3.1): the operator configures no `alg`. */
function parsePrivateKey(pem: string, file: string): PrivateKey {
  let key: KeyObject;
  try {
    if (!pem.includes('-----BEGIN PRIVATE KEY-----')) throw new Error('not PKCS#8');
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch {
    throw new CredentialError(
      `token.credentials.privateKeyFile: ${file} is not a PKCS#8 PEM private key`,
    );
  }
  const curve = key.asymmetricKeyDetails?.namedCurve;
  const alg =
    key.asymmetricKeyType === 'rsa'
      ? 'RS256'
      : key.asymmetricKeyType === 'rsa-pss'
        ? 'PS256'
        : key.asymmetricKeyType === 'ed25519'
          ? 'EdDSA'
          : key.asymmetricKeyType === 'ec'
            ? { prime256v1: 'ES256', secp384r1: 'ES384', secp521r1: 'ES512' }[curve ?? '']
            : undefined;
  if (!alg) {
    throw new CredentialError(
      `token.credentials.privateKeyFile: ${file} holds a ${key.asymmetricKeyType} key, which has no supported JWS algorithm`,
    );
  }
  return { key, alg };
}

/**
 * Reads a Redis password file (as Kubernetes mounts a secret). Unlike the client
 * credentials only one trailing newline is dropped: a Redis password may end in a space.
 * The error names the file, never its contents.
 */
export function readRedisPassword(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new CredentialError(`rateLimit.shared.passwordFile: cannot read ${file} (${code})`);
  }
  const password = text.replace(/\r?\n$/, '');
  if (password === '') throw new CredentialError(`rateLimit.shared.passwordFile: ${file} is empty`);
  return password;
}

/**
 * The files among `files` that every user of the host may read (mode o+r, following symlinks as
 * Kubernetes secret volumes use them). A secret there is one `ps`-less step from any process on
 * the node: start-up warns once, naming them.
 */
export function worldReadable(files: readonly string[]): string[] {
  return files.filter((file) => {
    try {
      return (statSync(file).mode & 0o004) !== 0;
    } catch {
      return false; // unreadable files are reported by the reads themselves
    }
  });
}
