import { readFileSync } from 'node:fs';
import { type Document, isMap, isScalar, isSeq, LineCounter, parseDocument } from 'yaml';
import { M2mError } from '../errors.js';
import {
  type Config,
  configSchema,
  crossCheck,
  DEFAULT_ROUTE,
  ROUTE_KEYS,
  ROUTE_NAME,
  routeSchema,
  routesConfigSchema,
} from './config.js';
import type { Issue, Node } from './schema.js';

/** Alias references allowed when the YAML is expanded (the yaml library's default, made explicit). */
const MAX_ALIAS_COUNT = 100;

/** Prefix of every environment override (`upstream.url` → `M2M_PROXY_UPSTREAM_URL`). */
const ENV_PREFIX = 'M2M_PROXY_';

/**
 * The configuration could not be used. `problems` holds one line per problem, each naming where
 * it is (`file:line:col` or the environment variable) and the dotted key.
 */
export class ConfigError extends M2mError {
  readonly code = 'invalid_configuration';
  readonly problems: readonly string[];
  /**
   * What could be decoded despite the problems (keys with errors are missing), so that the
   * credentials it names can still be read and their errors reported together with these.
   */
  readonly partial: unknown;
  constructor(problems: readonly string[], partial?: unknown) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.problems = problems;
    this.partial = partial;
  }
}

/** The environment variable that overrides a dotted key. */
export function envName(path: readonly string[]): string {
  return ENV_PREFIX + path.join('_').toUpperCase();
}

/**
 * The environment variable that overrides a key of the route `name`
 * (`billing`, `upstream.url` → `M2M_PROXY_ROUTES_BILLING_UPSTREAM_URL`; `-` becomes `_`).
 */
export function routeEnvName(name: string, path: readonly string[]): string {
  return envName(['routes', name.replaceAll('-', '_'), ...path]);
}

/** A key path as the messages print it: `routes[1].listen.port`, `token.url`. */
function formatPath(path: readonly string[]): string {
  return path.reduce(
    (out, segment) =>
      /^\d+$/.test(segment) ? `${out}[${segment}]` : out ? `${out}.${segment}` : segment,
    '',
  );
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
    // Synchronous: read once, before anything listens (node:fs/promises would also bring Node's
    // readline and REPL history code with it, ≈ 0.5 MB for the life of the process).
    text = readFileSync(file, 'utf8');
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
  let raw: unknown;
  try {
    // The yaml library refuses documents whose aliases would expand past 100 references (a
    // "billion laughs" file): one line, exit 2, instead of a stack trace or an exhausted heap.
    raw = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) ?? {};
  } catch (err) {
    throw new ConfigError([
      `${file}: ${(err instanceof Error ? err.message : String(err)).split('\n')[0]}`,
    ]);
  }
  const fromEnv = new Map<string, string>();
  const issues: Issue[] = [];
  const withRoutes = isRecord(raw) && raw.routes !== undefined && raw.routes !== null;
  if (isRecord(raw)) {
    if (withRoutes) routeRules(raw, issues);
    applyEnv(withRoutes ? routesConfigSchema : configSchema, [], [], raw, env, fromEnv);
    if (withRoutes && Array.isArray(raw.routes)) {
      raw.routes.forEach((route: unknown, i) => {
        // Only a route with a valid name can be addressed from the environment.
        if (!isRecord(route) || typeof route.name !== 'string' || !ROUTE_NAME.test(route.name))
          return;
        const envPath = ['routes', route.name.replaceAll('-', '_')];
        applyEnv(routeSchema, ['routes', String(i)], envPath, route, env, fromEnv, ['name']);
      });
    }
  }

  const decoded = withRoutes ? decodeRoutes(raw, issues) : decodeSingle(raw, issues);
  if (decoded && issues.length === 0) issues.push(...crossCheck(decoded));
  if (issues.length > 0 || !decoded) {
    const located = issues.map((issue) => {
      const key = issue.path.join('.');
      const env = fromEnv.get(key);
      const pos = env ? undefined : locate(doc, lines, issue.path);
      const where = env ?? (pos ? `${file}:${pos.line}:${pos.col}` : file);
      return {
        text: `${where}: ${formatPath(issue.path) || '(top level)'}: ${issue.message}`,
        order: pos ? pos.line * 1e6 + pos.col : 0,
      };
    });
    // In file order, so the list reads top to bottom; keys without a position come first.
    throw new ConfigError(
      located.sort((a, b) => a.order - b.order).map((p) => p.text),
      decoded,
    );
  }
  return deepFreeze(decoded);
}

/** A file without `routes`: one route, `default`, on `listen`. */
function decodeSingle(raw: unknown, issues: Issue[]): Config | undefined {
  const decoded = configSchema.decode(raw, [], issues);
  if (!decoded) return undefined;
  const { listen, upstream, token, rateLimit } = decoded;
  return { ...decoded, routes: [{ name: DEFAULT_ROUTE, listen, upstream, token, rateLimit }] };
}

/** A file with `routes`: each route's host defaults to the top-level `listen.host`. */
function decodeRoutes(raw: unknown, issues: Issue[]): Config | undefined {
  const decoded = routesConfigSchema.decode(raw, [], issues);
  if (!decoded?.routes) return undefined;
  const host = decoded.listen.host;
  return {
    ...decoded,
    routes: decoded.routes.map((route) => ({
      ...route,
      listen: { host: route.listen.host ?? host, port: route.listen.port },
    })),
  };
}

/**
 * Top-level keys that a file with `routes` must not have: they are reported once, by name, and
 * removed so that the schema does not report them again as unknown.
 */
function routeRules(raw: Record<string, unknown>, issues: Issue[]): void {
  for (const key of ROUTE_KEYS) {
    if (raw[key] === undefined) continue;
    issues.push({
      path: [key],
      message:
        'cannot be used together with routes: each route has its own (move it into the routes)',
    });
    delete raw[key];
  }
  const listen = raw.listen;
  if (isRecord(listen) && listen.port !== undefined) {
    issues.push({
      path: ['listen', 'port'],
      message: 'cannot be used together with routes: each route has its own listen.port',
    });
    delete listen.port;
  }
}

/**
 * Copies `M2M_PROXY_*` values onto the raw tree for every scalar key of the schema. `path` is
 * where the keys are in the file (what issues name), `envPath` what the variable names start
 * with (a route's name instead of its index); `skip` lists keys never taken from the environment.
 */
function applyEnv(
  node: Node<unknown>,
  path: string[],
  envPath: string[],
  target: Record<string, unknown>,
  env: Readonly<Record<string, string | undefined>>,
  fromEnv: Map<string, string>,
  skip: readonly string[] = [],
): void {
  for (const [key, child] of Object.entries(node.fields ?? {})) {
    if (skip.includes(key)) continue;
    const childPath = [...path, key];
    if (child.kind === 'scalar') {
      const name = envName([...envPath, key]);
      const value = env[name];
      // An empty variable counts as unset: manifests often template `VAR: ""` for "no override".
      if (value !== undefined && value !== '') {
        target[key] = value;
        fromEnv.set(childPath.join('.'), `${name} (environment)`);
      }
    } else if (child.kind === 'object') {
      const existing = target[key];
      const sub = isRecord(existing) ? existing : {};
      applyEnv(child, childPath, [...envPath, key], sub, env, fromEnv);
      if (sub !== existing && Object.keys(sub).length > 0) target[key] = sub;
    }
  }
}

/** Line and column of the deepest key of `path` present in the YAML. */
function locate(
  doc: Document,
  lines: LineCounter,
  path: readonly string[],
): { line: number; col: number } | undefined {
  let node: unknown = doc.contents;
  let offset: number | undefined;
  for (const segment of path) {
    if (isSeq(node)) {
      const item: unknown = node.items[Number(segment)];
      const range = (item as { range?: [number, number, number] } | undefined)?.range;
      if (!range) break;
      offset = range[0];
      node = item;
      continue;
    }
    if (!isMap(node)) break;
    const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === segment);
    if (!pair) break;
    if (isScalar(pair.key) && pair.key.range) offset = pair.key.range[0];
    node = pair.value;
  }
  return offset === undefined ? undefined : lines.linePos(offset);
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
