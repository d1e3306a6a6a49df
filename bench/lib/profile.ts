/**
 * Where the time goes: a summary of a V8 `.cpuprofile` (from `node --cpu-prof`) by self time,
 * per function and per origin (node core module, npm package, m2m-proxy's own files, GC, idle).
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  totalMs: number;
  /** Share of non-idle time per origin, largest first. */
  byOrigin: { origin: string; share: number }[];
  /** Top functions by self time (share of non-idle time). */
  topFunctions: { fn: string; share: number }[];
}

function origin(url: string, name: string, root: string): string {
  if (url === '') return name.startsWith('(') ? name : '(native)';
  if (url.startsWith('node:')) return url;
  const path = url.startsWith('file:') ? fileURLToPath(url) : url;
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(path);
  if (pkg?.[1]) return pkg[1];
  return relative(root, path) || path;
}

/** A short location: `undici/lib/dispatcher/client-h1.js`, `dist/proxy/handler.js`, `node:net`. */
function where(url: string, root: string): string {
  if (url === '' || url.startsWith('node:')) return url;
  const path = url.startsWith('file:') ? fileURLToPath(url) : url;
  const i = path.lastIndexOf('node_modules/');
  return i >= 0 ? path.slice(i + 'node_modules/'.length) : relative(root, path) || path;
}

export function summarizeProfile(file: string, root: string, top = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => {
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  const origins = new Map<string, number>();
  const fns = new Map<string, number>();
  let busy = 0;
  let total = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    total += us;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === '(idle)') continue;
    busy += us;
    const o = origin(url, functionName, root);
    origins.set(o, (origins.get(o) ?? 0) + us);
    const fn = `${functionName || '(anonymous)'} ${where(url, root)}${url ? `:${lineNumber + 1}` : ''}`;
    fns.set(fn, (fns.get(fn) ?? 0) + us);
  }
  const ranked = (m: Map<string, number>) =>
    [...m.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v / busy] as const);
  return {
    totalMs: total / 1000,
    byOrigin: ranked(origins)
      .slice(0, top)
      .map(([origin, share]) => ({ origin, share })),
    topFunctions: ranked(fns)
      .slice(0, top)
      .map(([fn, share]) => ({ fn, share })),
  };
}
