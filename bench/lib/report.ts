/** Tables for the terminal and for Markdown (docs/benchmarks.md), from one list of rows. */
import type { TargetCheck } from './context.js';

type Row = readonly (string | number)[];

/** A fixed-width text table; numbers are right-aligned. */
export function textTable(head: Row, rows: readonly Row[]): string {
  const all = [head, ...rows].map((r) => r.map(String));
  const widths = head.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const line = (r: string[], src: Row) =>
    r
      .map((cell, i) =>
        typeof src[i] === 'number' ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0),
      )
      .join('  ')
      .trimEnd();
  const [h, ...body] = all as [string[], ...string[][]];
  return [
    line(h, head),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...body.map((r, i) => line(r, rows[i] ?? [])),
  ].join('\n');
}

export function markdownTable(head: Row, rows: readonly Row[]): string {
  const cell = (v: string | number) => String(v).replaceAll('|', '\\|');
  const align = head.map((_, i) => (typeof rows[0]?.[i] === 'number' ? '---:' : '---'));
  return [
    `| ${head.map(cell).join(' | ')} |`,
    `| ${align.join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`),
  ].join('\n');
}

export function verdict(pass: boolean | null): string {
  return pass === null ? 'SKIP' : pass ? 'PASS' : 'FAIL';
}

export function checkRows(checks: readonly TargetCheck[]): Row[] {
  return checks.map((c) => [c.target, c.goal, c.measured, verdict(c.pass)]);
}

export const CHECK_HEAD: Row = ['target', 'goal', 'measured', 'result'];
