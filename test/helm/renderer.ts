import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

/** The repository root (this file is test/helm/renderer.ts). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const CHART_DIR = join(ROOT, 'helm/m2m-proxy');

/**
 * The offline stand-in for `helm template` (../shared/tools/helm-render, beside the clone). Its
 * build.sh writes the binary to the path it is given, never into shared/ (read-only in CI).
 */
const STAND_IN_DIR = resolve(ROOT, '../shared/tools/helm-render');
const STAND_IN_BUILD = join(STAND_IN_DIR, 'build.sh');
const STAND_IN_BIN = join(tmpdir(), 'm2m-proxy-helm-render', 'helm-render');

/** Kubernetes version the chart is rendered for: the first with native sidecars on by default. */
export const KUBE_VERSION = 'v1.29.0';

export interface RenderOptions {
  valuesFiles?: readonly string[];
  set?: readonly string[];
  kubeVersion?: string;
  releaseName?: string;
  namespace?: string;
}

export interface RenderResult {
  status: number;
  stdout: string;
  stderr: string;
}

export interface Renderer {
  /** `helm` (a real Helm on the PATH) or `helm-render` (the stand-in). */
  readonly kind: 'helm' | 'helm-render';
  render(chartDir: string, options?: RenderOptions): RenderResult;
}

/** What the chart tests will render with, decided without building anything. */
export type RendererPlan =
  | { available: true; kind: 'helm'; describe: string }
  | { available: true; kind: 'helm-render'; bin?: string; describe: string }
  | { available: false; reason: string };

function onPath(command: string): boolean {
  return spawnSync(command, ['version', '--short'], { stdio: 'ignore' }).status === 0;
}

/**
 * Prefers a real `helm` on the PATH, then a prebuilt stand-in named by `M2M_PROXY_HELM_RENDER`,
 * then building the stand-in from ../shared/tools/helm-render. `M2M_PROXY_SKIP_HELM_TESTS=1`
 * skips the chart tests on purpose (e.g. a laptop without Debian's Go packages).
 */
export function planRenderer(env: NodeJS.ProcessEnv = process.env): RendererPlan {
  if (env.M2M_PROXY_SKIP_HELM_TESTS === '1') {
    return { available: false, reason: 'M2M_PROXY_SKIP_HELM_TESTS=1 is set' };
  }
  if (onPath('helm')) return { available: true, kind: 'helm', describe: 'helm template' };
  const prebuilt = env.M2M_PROXY_HELM_RENDER;
  if (prebuilt) {
    return existsSync(prebuilt)
      ? { available: true, kind: 'helm-render', bin: prebuilt, describe: prebuilt }
      : { available: false, reason: `M2M_PROXY_HELM_RENDER=${prebuilt} does not exist` };
  }
  if (existsSync(STAND_IN_BUILD)) {
    return { available: true, kind: 'helm-render', describe: `helm-render (${STAND_IN_BUILD})` };
  }
  return {
    available: false,
    reason: `no \`helm\` on the PATH and no stand-in renderer at ${STAND_IN_BUILD}`,
  };
}

/**
 * Builds the stand-in unless a build newer than its source is cached in the temp directory. The
 * first build installs Go from Debian (apt-get, as root) and takes 20 s or more.
 */
function buildStandIn(): string {
  const source = join(STAND_IN_DIR, 'main.go');
  if (existsSync(STAND_IN_BIN) && statSync(STAND_IN_BIN).mtimeMs > statSync(source).mtimeMs) {
    return STAND_IN_BIN;
  }
  mkdirSync(dirname(STAND_IN_BIN), { recursive: true });
  // Build beside the final path and rename: concurrent test runs never see half a binary.
  const partial = `${STAND_IN_BIN}.${process.pid}`;
  try {
    execFileSync('sh', [STAND_IN_BUILD, partial], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: Buffer; stdout?: Buffer };
    throw new Error(
      `could not build the helm-render stand-in with ${STAND_IN_BUILD} (it needs Debian's golang-go and sprig packages, installed by apt-get as root); set M2M_PROXY_SKIP_HELM_TESTS=1 to skip the chart tests.\n${e.stderr?.toString() ?? ''}${e.stdout?.toString() ?? ''}`,
    );
  }
  renameSync(partial, STAND_IN_BIN);
  return STAND_IN_BIN;
}

/** Makes the planned renderer usable (building the stand-in if needed). */
export function createRenderer(plan: RendererPlan & { available: true }): Renderer {
  if (plan.kind === 'helm') {
    return {
      kind: 'helm',
      render: (chartDir, o = {}) =>
        run('helm', [
          'template',
          o.releaseName ?? 'release-name',
          chartDir,
          ...commonArgs(o),
          // Real Helm only renders capability-gated kinds it is told about.
          '--api-versions',
          'monitoring.coreos.com/v1',
        ]),
    };
  }
  const bin = plan.bin ?? buildStandIn();
  return {
    kind: 'helm-render',
    render: (chartDir, o = {}) =>
      run(bin, ['--name', o.releaseName ?? 'release-name', ...commonArgs(o), chartDir]),
  };
}

function commonArgs(o: RenderOptions): string[] {
  return [
    '--namespace',
    o.namespace ?? 'default',
    '--kube-version',
    o.kubeVersion ?? KUBE_VERSION,
    ...(o.valuesFiles ?? []).flatMap((f) => ['-f', f]),
    ...(o.set ?? []).flatMap((s) => ['--set', s]),
  ];
}

function run(command: string, args: string[]): RenderResult {
  const r = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { status: r.status ?? 1, stdout: r.stdout, stderr: r.stderr };
}

/** A rendered Kubernetes object. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> } & Record<
    string,
    unknown
  >;
  // biome-ignore lint/suspicious/noExplicitAny: rendered manifests are checked field by field
  spec?: any;
  data?: Record<string, string>;
}

/** Parses `helm template` output into its objects; throws on YAML errors. */
export function parseManifests(text: string): K8sObject[] {
  const objects: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`invalid YAML in rendered output: ${doc.errors[0]}`);
    const value = doc.toJS() as K8sObject | null;
    if (value) objects.push(value);
  }
  return objects;
}

/** Helm's coalescing of values over defaults (`null` deletes a key; maps merge, the rest replaces). */
export function mergeValues(base: unknown, override: unknown): unknown {
  if (override === null) return undefined;
  if (isPlainObject(base) && isPlainObject(override)) {
    const out: Record<string, unknown> = { ...base };
    for (const [k, v] of Object.entries(override)) {
      const m = mergeValues(base[k], v);
      if (m === undefined) delete out[k];
      else out[k] = m;
    }
    return out;
  }
  return override === undefined ? base : override;
}

/** A YAML/JSON mapping (not an array, not null). */
export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
