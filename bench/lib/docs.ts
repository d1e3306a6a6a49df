/**
 * docs/benchmarks.md shows the latest results between two markers; a complete bench run writes
 * `bench/results/latest.md` there too, so the page never carries hand-copied figures (the docs
 * test checks that both are identical).
 */

export const RESULTS_BEGIN =
  '<!-- BEGIN bench/results/latest.md: written by `npm run bench`, do not edit -->';
export const RESULTS_END = '<!-- END bench/results/latest.md -->';

/** The results between the markers of `page`; throws when the markers are missing. */
export function resultsIn(page: string): string {
  const begin = page.indexOf(RESULTS_BEGIN);
  const end = page.indexOf(RESULTS_END);
  if (begin < 0 || end < begin) throw new Error('docs/benchmarks.md lacks the results markers');
  return page.slice(begin + RESULTS_BEGIN.length, end).replace(/^\n/, '');
}

/** `page` with the results between its markers replaced by `latestMd`. */
export function withResults(page: string, latestMd: string): string {
  const begin = page.indexOf(RESULTS_BEGIN);
  const end = page.indexOf(RESULTS_END);
  if (begin < 0 || end < begin) throw new Error('docs/benchmarks.md lacks the results markers');
  const body = latestMd.endsWith('\n') ? latestMd : `${latestMd}\n`;
  return `${page.slice(0, begin + RESULTS_BEGIN.length)}\n${body}${page.slice(end)}`;
}

/**
 * The Markdown with table padding removed (`| a   |` → `| a |`, `| ---: |` kept as `---:`): the
 * page is formatted by Biome, which pads table cells, while latest.md is written compact.
 */
export function withoutTablePadding(markdown: string): string {
  return markdown
    .split('\n')
    .map((line) =>
      line.startsWith('|')
        ? line
            .split(/(?<!\\)\|/)
            .map((cell) => cell.trim().replace(/^(:?)-{3,}(:?)$/, '$1---$2'))
            .join(' | ')
            .trim()
        : line,
    )
    .join('\n');
}
