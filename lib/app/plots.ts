/** Small charts for the CLI's reports (x2i demo's loss curves, x2i eval's scores): SVG with a title, labelled axes,
 * ticks and a legend, and the same rendered to PNG by sharp (librsvg). */
import fs from 'node:fs';

export interface Series {
  name: string;
  values: number[];
  /** CSS colour, e.g. '#c81e1e'. */
  color: string;
}
export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** Line charts: a logarithmic y axis (values ≤ 0 are left out). Default false. */
  logY?: boolean;
  /** Bar charts: one label per group of bars (x axis). */
  categories?: string[];
  width?: number;
  height?: number;
}

const esc = (s: string) => s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
const fmt = (v: number) => (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(1) : Number(v.toPrecision(3)).toString());

/** About five round tick values over [lo, hi]. */
function ticks(lo: number, hi: number): number[] {
  if (!(hi > lo)) return [lo];
  const step = 10 ** Math.floor(Math.log10((hi - lo) / 5)), m = (hi - lo) / 5 / step;
  const s = step * (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10);
  const out: number[] = [];
  for (let v = Math.ceil(lo / s) * s; v <= hi + s * 1e-9; v += s) out.push(Number(v.toPrecision(12)));
  return out;
}

function frame(o: ChartOptions, W: number, H: number, m: { l: number; r: number; t: number; b: number }, yLo: number, yHi: number,
  y: (v: number) => number, logY: boolean): string[] {
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">${esc(o.title)}</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="#000"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="#000"/>`,
    `<text x="${(m.l + W - m.r) / 2}" y="${H - 8}" text-anchor="middle">${esc(o.xLabel)}</text>`,
    `<text transform="translate(14 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`];
  const yt = logY ? ticks(Math.floor(yLo), Math.ceil(yHi)).filter((v) => Number.isInteger(v)).map((e) => 10 ** e) : ticks(yLo, yHi);
  for (const v of yt) {
    const py = y(logY ? Math.log10(v) : v);
    if (py < m.t - 0.5 || py > H - m.b + 0.5) continue;
    parts.push(`<line x1="${m.l - 4}" y1="${py}" x2="${W - m.r}" y2="${py}" stroke="#ddd"/>`,
      `<text x="${m.l - 6}" y="${py + 4}" text-anchor="end">${fmt(v)}</text>`);
  }
  // legend: one row under the title, above the plot area
  let lx = m.l;
  for (const s of o.series) {
    parts.push(`<rect x="${lx}" y="${m.t - 19}" width="12" height="10" fill="${esc(s.color)}"/>`,
      `<text x="${lx + 16}" y="${m.t - 10}">${esc(s.name)}</text>`);
    lx += 28 + 7 * s.name.length;
  }
  return parts;
}

/** A line chart of each series against its index (x: 1 … n). */
export function lineChartSvg(o: ChartOptions): string {
  const W = o.width ?? 560, H = o.height ?? 300, m = { l: 64, r: 16, t: 48, b: 42 };
  const logY = Boolean(o.logY);
  const tr = (v: number) => (logY ? Math.log10(v) : v);
  const all = o.series.flatMap((s) => s.values.filter((v) => Number.isFinite(v) && (!logY || v > 0)).map(tr));
  let lo = all.length ? Math.min(...all) : 0, hi = all.length ? Math.max(...all) : 1;
  if (hi === lo) lo -= 0.5, hi += 0.5;
  const n = Math.max(1, ...o.series.map((s) => s.values.length));
  const x = (i: number) => m.l + (n === 1 ? 0.5 : i / (n - 1)) * (W - m.l - m.r);
  const y = (v: number) => H - m.b - ((v - lo) / (hi - lo)) * (H - m.t - m.b);
  const parts = frame(o, W, H, m, lo, hi, y, logY);
  for (const t of ticks(1, n).filter((v) => Number.isInteger(v)))
    parts.push(`<text x="${x(t - 1)}" y="${H - m.b + 16}" text-anchor="middle">${t}</text>`);
  for (const s of o.series) {
    const pts = s.values.map((v, i) => (Number.isFinite(v) && (!logY || v > 0) ? `${x(i).toFixed(1)},${y(tr(v)).toFixed(1)}` : null)).filter(Boolean);
    parts.push(`<polyline fill="none" stroke="${esc(s.color)}" stroke-width="1.5" points="${pts.join(' ')}"/>`);
  }
  return parts.concat('</svg>').join('\n');
}

/** Grouped bars: one group per category, one bar per series, y from 0. */
export function barChartSvg(o: ChartOptions): string {
  const cats = o.categories ?? o.series[0]?.values.map((_, i) => String(i + 1)) ?? [];
  const W = o.width ?? Math.max(560, 90 + cats.length * 22 * Math.max(1, o.series.length)), H = o.height ?? 300;
  const m = { l: 64, r: 16, t: 48, b: 42 };
  const vals = o.series.flatMap((s) => s.values.filter(Number.isFinite));
  const lo = Math.min(0, ...vals), hi = Math.max(...vals, lo + 1) * 1.05;
  const y = (v: number) => H - m.b - ((v - lo) / (hi - lo)) * (H - m.t - m.b);
  const parts = frame(o, W, H, m, lo, hi, y, false);
  const gw = (W - m.l - m.r) / Math.max(1, cats.length), bw = (gw * 0.8) / Math.max(1, o.series.length);
  cats.forEach((c, i) => {
    const gx = m.l + i * gw + gw * 0.1;
    parts.push(`<text x="${gx + gw * 0.4}" y="${H - m.b + 16}" text-anchor="middle">${esc(c.length > 14 ? `${c.slice(0, 13)}…` : c)}</text>`);
    o.series.forEach((s, k) => {
      const v = s.values[i];
      if (!Number.isFinite(v)) return;
      const top = y(Math.max(v, 0)), bottom = y(Math.min(v, 0));
      parts.push(`<rect x="${(gx + k * bw).toFixed(1)}" y="${top.toFixed(1)}" width="${(bw * 0.92).toFixed(1)}" height="${Math.max(0.5, bottom - top).toFixed(1)}" fill="${esc(s.color)}"><title>${esc(s.name)} ${fmt(v)}</title></rect>`);
    });
  });
  return parts.concat('</svg>').join('\n');
}

/** Writes `svg` to `file` (.svg as is; .png rendered by sharp). */
export async function writeChart(file: string, svg: string): Promise<void> {
  if (file.toLowerCase().endsWith('.svg')) return fs.writeFileSync(file, svg);
  const { default: sharp } = await import('sharp');
  await sharp(Buffer.from(svg)).png().toFile(file);
}
