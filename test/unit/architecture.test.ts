/**
 * The module rules of docs/development.md ("Source layout"), checked on the import graph of
 * `src/**\/*.ts` as the files spell it (static imports, re-exports and `import()`), so a new
 * arrow that breaks the layering fails here before review. Each rule is also run on a small
 * graph that breaks it, so none of them can pass by checking nothing.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = join(import.meta.dirname, '../../src');

/** A source file: its path below `src/`, the files it imports (same form), its text. */
interface SourceFile {
  readonly path: string;
  readonly imports: readonly string[];
  readonly text: string;
}

/** Every relative import of a file, as a path below `src/` (`.js` → `.ts`). */
function importsOf(path: string, text: string): string[] {
  const found: string[] = [];
  const patterns = [
    /^\s*(?:import|export)\s[^'"]*?from\s*'(\.[^']+)'/gm,
    /^\s*import\s*'(\.[^']+)'/gm,
    /\bimport\(\s*'(\.[^']+)'\s*\)/g,
  ];
  for (const pattern of patterns) {
    for (const m of text.matchAll(pattern)) {
      const target = normalize(join(dirname(path), m[1] as string)).replace(/\.js$/, '.ts');
      found.push(target);
    }
  }
  return found;
}

function sourceFiles(dir = SRC): SourceFile[] {
  const files: SourceFile[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) files.push(...sourceFiles(full));
    else if (entry.name.endsWith('.ts')) {
      const path = relative(SRC, full);
      const text = readFileSync(full, 'utf8');
      files.push({ path, imports: importsOf(path, text), text });
    }
  }
  return files;
}

/** The module of a file: its folder below `src/`, or its own name for a top-level file. */
function moduleOf(path: string): string {
  const [first, ...rest] = path.split('/');
  return rest.length > 0 ? (first as string) : (first as string).replace(/\.ts$/, '');
}

/**
 * What each module may import (besides itself and npm packages): the module map of
 * docs/development.md. `app` and `main` are the entry: everything may be wired there.
 */
const MAY_IMPORT: Readonly<Record<string, readonly string[]>> = {
  abort: [],
  clock: [],
  errors: [],
  deadlines: ['clock'],
  config: ['errors', 'credentials'],
  credentials: ['clock', 'config', 'errors', 'log'],
  log: ['credentials', 'proxy', 'tracing'],
  metrics: ['proxy'],
  token: [
    'clock',
    'config',
    'credentials',
    'deadlines',
    'errors',
    'log',
    'metrics',
    'tracing',
    'undici',
  ],
  pacing: ['abort', 'clock', 'config', 'deadlines', 'errors', 'log', 'metrics'],
  proxy: [
    'clock',
    'config',
    'credentials',
    'errors',
    'log',
    'metrics',
    'pacing',
    'token',
    'tracing',
    'undici',
    'node-http',
  ],
  tracing: ['clock', 'config', 'log', 'proxy'],
  admin: ['node-http'],
  undici: [],
  'node-http': [],
  listen: ['errors'],
  check: ['config', 'credentials', 'proxy'],
  app: [
    'admin',
    'clock',
    'config',
    'credentials',
    'errors',
    'listen',
    'log',
    'metrics',
    'pacing',
    'proxy',
    'token',
    'tracing',
  ],
  main: ['app', 'check', 'config', 'listen', 'log'],
};

/** Imports that cross the module map: `from → to` for each one. */
function offMap(files: readonly SourceFile[]): string[] {
  const wrong: string[] = [];
  for (const file of files) {
    const from = moduleOf(file.path);
    for (const target of file.imports) {
      const to = moduleOf(target);
      if (to === from) continue;
      if (!(MAY_IMPORT[from] ?? []).includes(to)) wrong.push(`${file.path} → ${target}`);
    }
  }
  return wrong;
}

/** Imports from `modules` into any of `forbidden`. */
function importsInto(
  files: readonly SourceFile[],
  modules: readonly string[],
  forbidden: readonly string[],
): string[] {
  return files.flatMap((f) =>
    modules.includes(moduleOf(f.path))
      ? f.imports.filter((t) => forbidden.includes(moduleOf(t))).map((t) => `${f.path} → ${t}`)
      : [],
  );
}

/** Files outside `config/` and the entry that read the process environment. */
function envReaders(files: readonly SourceFile[]): string[] {
  return files
    .filter((f) => !f.path.startsWith('config/') && f.path !== 'main.ts')
    .filter((f) => /\bprocess\s*\.\s*env\b|\bprocess\s*\[\s*['"]env['"]\s*\]/.test(f.text))
    .map((f) => f.path);
}

/** Files that import the entry point. */
function entryImporters(files: readonly SourceFile[]): string[] {
  return files.filter((f) => f.imports.includes('main.ts')).map((f) => f.path);
}

/** Every import cycle between files, each as the list of files around it (first repeated). */
function cycles(files: readonly SourceFile[]): string[][] {
  const graph = new Map(files.map((f) => [f.path, f.imports]));
  const found: string[][] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const stack: string[] = [];
  const visit = (path: string) => {
    state.set(path, 'visiting');
    stack.push(path);
    for (const next of graph.get(path) ?? []) {
      if (state.get(next) === 'visiting') found.push([...stack.slice(stack.indexOf(next)), next]);
      else if (!state.has(next) && graph.has(next)) visit(next);
    }
    stack.pop();
    state.set(path, 'done');
  };
  for (const path of graph.keys()) if (!state.has(path)) visit(path);
  return found;
}

/** A small graph for the self-checks: `[path, imports, text]`. */
function graph(...entries: Array<[string, string[], string?]>): SourceFile[] {
  return entries.map(([path, imports, text]) => ({ path, imports, text: text ?? '' }));
}

describe('the import graph of src/', () => {
  const files = sourceFiles();

  it('reads every source file and its imports', () => {
    // A parser that found nothing would make every rule below pass.
    expect(files.length).toBeGreaterThan(40);
    const app = files.find((f) => f.path === 'app.ts');
    expect(app?.imports).toEqual(expect.arrayContaining(['proxy/handler.ts', 'pacing/pacer.ts']));
    // The dynamic imports count too (tracing and the fleet store are loaded on demand).
    expect(app?.imports).toContain('tracing/otel.ts');
    expect(files.find((f) => f.path === 'pacing/shared-stores.ts')?.imports).toContain(
      'pacing/shared-store.ts',
    );
    for (const file of files) {
      for (const target of file.imports) {
        expect(
          files.some((f) => f.path === target),
          `${file.path} → ${target}`,
        ).toBe(true);
      }
    }
  });

  it('token and pacing import nothing from proxy or admin (they throw their own errors)', () => {
    expect(importsInto(files, ['token', 'pacing'], ['proxy', 'admin'])).toEqual([]);
  });

  it('nothing but config/ and the entry reads process.env', () => {
    expect(envReaders(files)).toEqual([]);
  });

  it('nothing imports the entry point', () => {
    expect(entryImporters(files)).toEqual([]);
  });

  it('has no import cycle between files', () => {
    expect(cycles(files)).toEqual([]);
  });

  it('every import follows the module map', () => {
    expect(offMap(files)).toEqual([]);
    // Every module of src/ is on the map.
    expect([...new Set(files.map((f) => moduleOf(f.path)))].sort()).toEqual(
      Object.keys(MAY_IMPORT).sort(),
    );
  });
});

describe('the rules themselves catch a violation', () => {
  it('an import from pacing into proxy', () => {
    const g = graph(['pacing/pacer.ts', ['proxy/errors.ts']], ['proxy/errors.ts', []]);
    expect(importsInto(g, ['token', 'pacing'], ['proxy', 'admin'])).toEqual([
      'pacing/pacer.ts → proxy/errors.ts',
    ]);
  });

  it('process.env read outside config/', () => {
    const g = graph(
      ['proxy/handler.ts', [], 'const x = process.env.X;'],
      ['token/client.ts', [], "const y = process['env'];"],
      ['config/load.ts', [], 'process.env.Y'],
      ['main.ts', [], 'process.env'],
    );
    expect(envReaders(g)).toEqual(['proxy/handler.ts', 'token/client.ts']);
  });

  it('an import of main.ts', () => {
    expect(entryImporters(graph(['app.ts', ['main.ts']], ['main.ts', []]))).toEqual(['app.ts']);
  });

  it('a cycle through three files', () => {
    const g = graph(['a.ts', ['b.ts']], ['b.ts', ['c/d.ts']], ['c/d.ts', ['a.ts']]);
    expect(cycles(g)).toEqual([['a.ts', 'b.ts', 'c/d.ts', 'a.ts']]);
  });

  it('an arrow the map does not allow', () => {
    const g = graph(['admin/server.ts', ['token/manager.ts']], ['token/manager.ts', []]);
    expect(offMap(g)).toEqual(['admin/server.ts → token/manager.ts']);
  });

  it('finds static, re-exported, side-effect and dynamic imports', () => {
    const text = [
      "import { a } from './a.js';",
      "import type { B } from '../b/b.js';",
      "export { c } from './c.js';",
      "import './d.js';",
      "const e = await import('./e.js');",
      "import { f } from 'node:fs';",
    ].join('\n');
    expect(importsOf('x/y.ts', text).sort()).toEqual(
      ['b/b.ts', 'x/a.ts', 'x/c.ts', 'x/d.ts', 'x/e.ts'].sort(),
    );
  });
});
