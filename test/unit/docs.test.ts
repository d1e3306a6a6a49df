import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { RESULTS_BEGIN, resultsIn, withoutTablePadding } from '../../bench/lib/docs.js';
import { configSchema } from '../../src/config/config.js';
import { envName } from '../../src/config/load.js';
import type { Node } from '../../src/config/schema.js';
import { Metrics, SharedBudgetMetrics } from '../../src/metrics/metrics.js';
import { PROXY_ERRORS } from '../../src/proxy/errors.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const read = (path: string) => readFileSync(join(ROOT, path), 'utf8');
const DOCS = readdirSync(join(ROOT, 'docs'))
  .filter((f) => f.endsWith('.md'))
  .map((f) => `docs/${f}`);

/** Every scalar or record key of the schema as a dotted path, with its kind. */
function configKeys(node: Node<unknown>, path: string[] = []): { path: string[]; kind: string }[] {
  return Object.entries(node.fields ?? {}).flatMap(([key, child]) =>
    child.kind === 'object'
      ? configKeys(child, [...path, key])
      : [{ path: [...path, key], kind: child.kind }],
  );
}

describe('docs', () => {
  it.each(Object.entries(PROXY_ERRORS))(
    'behaviour.md lists the error %s with its status',
    (code, { status }) => {
      expect(read('docs/behaviour.md')).toMatch(
        new RegExp(`^\\|\\s*${status}\\s*\\|\\s*\`${code}\`\\s*\\|`, 'm'),
      );
    },
  );

  it('metrics.md lists every m2m_proxy_ metric the proxy registers, in a table row', async () => {
    const registry = new Registry();
    new Metrics(registry, { defaultMetrics: false });
    new SharedBudgetMetrics(registry);
    const names = (await registry.getMetricsAsJSON()).map((m) => m.name);
    expect(names.length).toBeGreaterThanOrEqual(12);
    const page = read('docs/metrics.md');
    for (const name of names) expect(page).toMatch(new RegExp(`^\\|\\s*\`${name}\`\\s*\\|`, 'm'));
  });

  it('configuration.md lists every configuration key with its environment variable', () => {
    const page = read('docs/configuration.md');
    const keys = configKeys(configSchema as Node<unknown>);
    expect(keys.length).toBeGreaterThanOrEqual(30);
    for (const { path, kind } of keys) {
      const row = page.split('\n').find((l) => l.startsWith(`| \`${path.join('.')}\` `));
      expect(row, `a table row for ${path.join('.')}`).toBeDefined();
      // Records (token.params) have no fixed names below them, so no variable.
      if (kind === 'scalar') expect(row).toContain(`\`${envName(path)}\``);
    }
  });

  it('benchmarks.md shows exactly bench/results/latest.md', () => {
    const page = read('docs/benchmarks.md');
    expect(page).toContain(RESULTS_BEGIN);
    expect(withoutTablePadding(resultsIn(page))).toBe(
      withoutTablePadding(read('bench/results/latest.md')),
    );
  });
});

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1 for repeats. */
function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  // Only fenced blocks are dropped here: inline code in a heading is part of its anchor.
  for (const line of withoutFences(markdown).split('\n')) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m?.[1]) continue;
    const base = m[1]
      .replace(/`/g, '')
      .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

/** The text without fenced code blocks and inline code spans (links there are not links). */
function withoutFences(markdown: string): string {
  return markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '');
}

function withoutCode(markdown: string): string {
  return withoutFences(markdown).replace(/`[^`\n]*`/g, '');
}

/** Relative links and images of a Markdown file: `[text](target)`. */
function linksOf(markdown: string): string[] {
  return [...withoutCode(markdown).matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)]
    .map((m) => m[1] as string)
    .filter((target) => !/^[a-z][a-z0-9+.-]*:/i.test(target));
}

const LINKED_FILES = ['README.md', ...DOCS, 'helm/m2m-proxy/README.md'];

describe('relative links', () => {
  it('finds links to check', () => {
    expect(linksOf(read('README.md')).length).toBeGreaterThan(10);
    expect(linksOf('see [a](b.md#c) and `[x](y)` or [web](https://e.org)')).toEqual(['b.md#c']);
    expect([...anchorsOf("## The proxy's own errors\n## 1. The Secret\n## A\n## A")]).toEqual([
      'the-proxys-own-errors',
      '1-the-secret',
      'a',
      'a-1',
    ]);
  });

  it.each(LINKED_FILES)('in %s resolve to files and headings that exist', (file) => {
    const broken: string[] = [];
    for (const link of linksOf(read(file))) {
      const [pathPart = '', anchor] = link.split('#', 2);
      const target = pathPart === '' ? join(ROOT, file) : resolve(ROOT, dirname(file), pathPart);
      if (!existsSync(target)) {
        broken.push(`${link}: no ${relative(ROOT, target)}`);
        continue;
      }
      if (anchor === undefined) continue;
      if (!target.endsWith('.md') || statSync(target).isDirectory()) {
        broken.push(`${link}: an anchor into a file that is not Markdown`);
      } else if (!anchorsOf(readFileSync(target, 'utf8')).has(anchor)) {
        broken.push(`${link}: no heading #${anchor} in ${relative(ROOT, target)}`);
      }
    }
    expect(broken).toEqual([]);
  });
});

/** Files users get: they must not point outside the repository or at the project's issues. */
const SHIPPED = [
  'README.md',
  'docs',
  'src',
  'helm',
  'config',
  'demo',
  'bench/README.md',
  'Dockerfile',
];
const OUTSIDE = /\.\.\/shared|CONTRACT\.md|[Ii]ssue [0-9]+|issue #[0-9]+/;

function filesUnder(path: string): string[] {
  const full = join(ROOT, path);
  if (!existsSync(full)) return [];
  if (!statSync(full).isDirectory()) return [path];
  return readdirSync(full).flatMap((f) => filesUnder(join(path, f)));
}

describe('shipped files', () => {
  it('README.md is a front door of at most 12 KB', () => {
    expect(statSync(join(ROOT, 'README.md')).size).toBeLessThanOrEqual(12 * 1024);
  });

  it('mention nothing outside the repository (../shared, CONTRACT.md) and no issue numbers', () => {
    const files = SHIPPED.flatMap(filesUnder);
    expect(files.length).toBeGreaterThan(40);
    const hits = files.flatMap((file) =>
      read(file)
        .split('\n')
        .flatMap((line, i) => (OUTSIDE.test(line) ? [`${file}:${i + 1}: ${line.trim()}`] : [])),
    );
    expect(hits).toEqual([]);
  });
});
