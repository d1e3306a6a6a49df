/**
 * The chart for docs/benchmarks.md: req/s (left) and p99 latency (right) per target, GET and POST side
 * by side, as a hand-written SVG (no charting dependency for two bar groups).
 */

export interface ChartSeries {
  target: string;
  get?: { rps: number; p99: number };
  post?: { rps: number; p99: number };
}

const COLORS = { GET: '#4e79a7', POST: '#f28e2b' } as const;
const esc = (s: string) =>
  s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');

function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmt(v: number, unit: 'rps' | 'ms'): string {
  if (v === 0) return '0';
  if (unit === 'rps') return v >= 1000 ? `${(v / 1000).toFixed(1)}k` : String(Math.round(v));
  return v >= 10 ? v.toFixed(0) : v.toFixed(1);
}

function panel(
  series: readonly ChartSeries[],
  metric: 'rps' | 'p99',
  x0: number,
  width: number,
  title: string,
): string {
  const top = 84;
  const height = 220;
  const left = 48;
  const plotW = width - left - 10;
  const values = series.flatMap((s) => [s.get?.[metric] ?? 0, s.post?.[metric] ?? 0]);
  const max = niceMax(Math.max(...values));
  const y = (v: number) => top + height - (v / max) * height;
  const unit = metric === 'rps' ? 'rps' : 'ms';
  const out: string[] = [
    `<text x="${x0 + left + plotW / 2}" y="${top - 24}" text-anchor="middle" font-weight="bold">${esc(title)}</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    out.push(
      `<line x1="${x0 + left}" x2="${x0 + left + plotW}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`,
      `<text x="${x0 + left - 6}" y="${y(v) + 4}" text-anchor="end" fill="#555">${fmt(v, unit)}</text>`,
    );
  }
  const group = plotW / Math.max(series.length, 1);
  const bar = Math.min(28, (group - 14) / 2);
  series.forEach((s, i) => {
    const gx = x0 + left + i * group + group / 2;
    (['GET', 'POST'] as const).forEach((m, j) => {
      const v = (m === 'GET' ? s.get : s.post)?.[metric];
      if (v === undefined) return;
      const bx = gx - bar + j * bar;
      out.push(
        `<rect x="${bx.toFixed(1)}" y="${y(v).toFixed(1)}" width="${(bar - 2).toFixed(1)}" height="${(top + height - y(v)).toFixed(1)}" fill="${COLORS[m]}"><title>${esc(s.target)} ${m}: ${fmt(v, unit)}${unit === 'ms' ? ' ms' : ' req/s'}</title></rect>`,
        `<text x="${(bx + (bar - 2) / 2).toFixed(1)}" y="${(y(v) - 4).toFixed(1)}" text-anchor="middle" font-size="10" fill="#333">${fmt(v, unit)}</text>`,
      );
    });
    const weight = s.target === 'm2m-proxy' ? ' font-weight="bold"' : '';
    out.push(
      `<text x="${gx}" y="${top + height + 16}" text-anchor="middle"${weight}>${esc(s.target)}</text>`,
    );
  });
  out.push(
    `<line x1="${x0 + left}" x2="${x0 + left + plotW}" y1="${top + height}" y2="${top + height}" stroke="#333"/>`,
  );
  return out.join('\n');
}

export function chartSvg(series: readonly ChartSeries[], subtitle: string): string {
  const width = 960;
  const half = width / 2;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="360" viewBox="0 0 ${width} 360" font-family="system-ui, sans-serif" font-size="12">
<rect width="${width}" height="360" fill="#fff"/>
<text x="${half}" y="20" text-anchor="middle" font-size="15" font-weight="bold">m2m-proxy bench: forwarding overhead (50 connections, pacing off)</text>
<text x="${half}" y="38" text-anchor="middle" fill="#555">${esc(subtitle)}</text>
${panel(series, 'rps', 0, half, 'requests per second (higher is better)')}
${panel(series, 'p99', half, half, 'p99 latency, ms (lower is better)')}
<rect x="${half - 70}" y="338" width="10" height="10" fill="${COLORS.GET}"/><text x="${half - 56}" y="347">GET</text>
<rect x="${half + 10}" y="338" width="10" height="10" fill="${COLORS.POST}"/><text x="${half + 24}" y="347">POST 1 KB</text>
</svg>
`;
}
