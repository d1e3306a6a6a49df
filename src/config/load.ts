import { readFile } from 'node:fs/promises';
import { type Document, isMap, isScalar, LineCounter, parseDocument } from 'yaml';
import { type Config, configSchema, crossCheck } from './config.js';
import type { Issue, Node } from './schema.js';

/** Prefix of every environment override (`upstream.url` → `M2M_PROXY_UPSTREAM_URL`). */
export const ENV_PREFIX = 'M2M_PROXY_';

/**
 * The configuration could not be used. `problems` holds one line per problem, each naming where
 * it is (`file:line:col` or the environment variable) and the dotted key.
 */
export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** The environment variable that overrides a dotted key. */
export function envName(path: readonly string[]): string {
  return ENV_PREFIX + path.join('_').toUpperCase();
}

/**
 * Loads a configuration: YAML file, then environment overrides, then validation of every key
 * and every cross-key rule, then a deep freeze. Throws `ConfigError` listing all problems.
 *
 * Environment variables that match no key are ignored rather than refused: Kubernetes injects
 * `<SERVICE>_PORT`-style variables for every Service, and a Service named `m2m-proxy` would
 * otherwise stop the sidecar from starting.
 */
export async function loadConfig(
  file: string,
  env: Readonly<Record<string, string | undefined>>,
): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError([
      `${file}: cannot read the configuration file (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
    ]);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((e) => {
        const pos = lines.linePos(e.pos[0]);
        return `${file}:${pos.line}:${pos.col}: ${e.message.split('\n')[0]}`;
      }),
    );
  }
  const raw: unknown = doc.toJS() ?? {};
  const fromEnv = new Map<string, string>();
  if (isRecord(raw)) applyEnv(configSchema, [], raw, env, fromEnv);

  const issues: Issue[] = [];
  const decoded = configSchema.decode(raw, [], issues);
  if (decoded && issues.length === 0) issues.push(...crossCheck(decoded));
  if (issues.length > 0 || !decoded) {
    throw new ConfigError(
      issues.map((issue) => {
        const key = issue.path.join('.');
        const where = fromEnv.get(key) ?? locate(doc, lines, file, issue.path);
        return `${where}: ${key || '(top level)'}: ${issue.message}`;
      }),
    );
  }
  return deepFreeze(decoded);
}

/** Copies `M2M_PROXY_*` values onto the raw tree for every scalar key of the schema. */
function applyEnv(
  node: Node<unknown>,
  path: string[],
  target: Record<string, unknown>,
  env: Readonly<Record<string, string | undefined>>,
  fromEnv: Map<string, string>,
): void {
  for (const [key, child] of Object.entries(node.fields ?? {})) {
    const childPath = [...path, key];
    if (child.kind === 'scalar') {
      const name = envName(childPath);
      const value = env[name];
      if (value !== undefined) {
        target[key] = value;
        fromEnv.set(childPath.join('.'), `${name} (environment)`);
      }
    } else if (child.kind === 'object') {
      const existing = target[key];
      const sub = isRecord(existing) ? existing : {};
      applyEnv(child, childPath, sub, env, fromEnv);
      if (sub !== existing && Object.keys(sub).length > 0) target[key] = sub;
    }
  }
}

/** `file:line:col` of the deepest key of `path` present in the YAML, else the file name. */
function locate(doc: Document, lines: LineCounter, file: string, path: readonly string[]): string {
  let node: unknown = doc.contents;
  let offset: number | undefined;
  for (const segment of path) {
    if (!isMap(node)) break;
    const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === segment);
    if (!pair) break;
    if (isScalar(pair.key) && pair.key.range) offset = pair.key.range[0];
    node = pair.value;
  }
  if (offset === undefined) return file;
  const pos = lines.linePos(offset);
  return `${file}:${pos.line}:${pos.col}`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}
