/**
 * A p50/p95 latency sparkline as inline SVG: no chart library.
 */
import { IPoint } from './stats';

const SVG = 'http://www.w3.org/2000/svg';

export const WIDTH = 180;
export const HEIGHT = 36;
const PAD = 2;

/** Path data for one series, with a gap wherever a second had no requests. */
function pathData(
  points: IPoint[],
  pick: (p: IPoint) => number | null,
  max: number
): string {
  const step = points.length > 1 ? (WIDTH - 2 * PAD) / (points.length - 1) : 0;
  const segments: string[][] = [];
  let current: string[] | null = null;
  points.forEach((point, index) => {
    const value = pick(point);
    if (value === null) {
      current = null;
      return;
    }
    const x = (PAD + index * step).toFixed(1);
    const y = (HEIGHT - PAD - (value / max) * (HEIGHT - 2 * PAD)).toFixed(1);
    if (current === null) {
      current = [];
      segments.push(current);
    }
    current.push(`${x},${y}`);
  });
  // A lone second would draw nothing: give it a short dash.
  return segments
    .map(segment =>
      segment.length === 1
        ? `M${segment[0]} l1.5,0`
        : `M${segment[0]} L${segment.slice(1).join(' L')}`
    )
    .join(' ');
}

export function createSparkline(): SVGSVGElement {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'jp-tfserve-sparkline');
  svg.setAttribute('width', String(WIDTH));
  svg.setAttribute('height', String(HEIGHT));
  svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute('role', 'img');
  for (const name of ['p95', 'p50']) {
    const path = document.createElementNS(SVG, 'path');
    path.setAttribute('class', `jp-tfserve-sparkline-${name}`);
    path.setAttribute('fill', 'none');
    svg.appendChild(path);
  }
  const title = document.createElementNS(SVG, 'title');
  svg.appendChild(title);
  return svg;
}

export function updateSparkline(svg: SVGSVGElement, points: IPoint[]): void {
  const max = Math.max(
    1e-3,
    ...points.map(p => Math.max(p.p95 ?? 0, p.p50 ?? 0))
  );
  const p95 = svg.querySelector('.jp-tfserve-sparkline-p95')!;
  const p50 = svg.querySelector('.jp-tfserve-sparkline-p50')!;
  p95.setAttribute('d', pathData(points, p => p.p95, max));
  p50.setAttribute('d', pathData(points, p => p.p50, max));
  const withData = points.filter(p => p.p50 !== null).length;
  svg.setAttribute('data-points', String(withData));
  svg.querySelector('title')!.textContent =
    `p50 (blue) and p95 (orange) latency per second, last ${points.length} s; ` +
    `top of the chart: ${max.toFixed(2)} ms`;
}
