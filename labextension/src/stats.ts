/**
 * Latency and rate figures for one model from its per-version windows.
 *
 * Shadow series ("2 shadow") are left out: they are not what clients see.
 * Per-second percentiles of several versions are combined weighted by each
 * version's request count (exact when one version serves the traffic).
 */
import { IWindowPoint, IWindows } from './api';

export interface IPoint {
  time: number;
  requests: number;
  p50: number | null;
  p95: number | null;
}

export interface IModelStats {
  /** One point per second over the window, oldest first. */
  points: IPoint[];
  /** Over the whole window. */
  p50: number | null;
  p95: number | null;
  requests: number;
  errors: number;
  /** Requests per second over the last RATE_SECONDS complete seconds. */
  rate: number;
}

export const RATE_SECONDS = 10;

function weighted(
  entries: Array<{ value: number | null; weight: number }>
): number | null {
  let total = 0;
  let sum = 0;
  for (const { value, weight } of entries) {
    if (value === null || value === undefined || weight <= 0) {
      continue;
    }
    total += weight;
    sum += value * weight;
  }
  return total > 0 ? sum / total : null;
}

export function modelStats(windows: IWindows | null): IModelStats {
  const seconds = windows?.seconds ?? 60;
  const now = windows?.now ?? Math.floor(Date.now() / 1000);
  const bySecond = new Map<number, IWindowPoint[]>();
  let requests = 0;
  let errors = 0;
  const overall: Array<{ p50: number | null; p95: number | null; weight: number }> = [];
  for (const [version, window] of Object.entries(windows?.versions ?? {})) {
    if (!/^\d+$/.test(version) && version !== 'none') {
      continue;
    }
    requests += window.requests;
    errors += window.errors;
    overall.push({ p50: window.p50_ms, p95: window.p95_ms, weight: window.requests });
    for (const point of window.series) {
      const list = bySecond.get(point.time) ?? [];
      list.push(point);
      bySecond.set(point.time, list);
    }
  }
  const points: IPoint[] = [];
  for (let time = now - seconds + 1; time <= now; time++) {
    const list = bySecond.get(time) ?? [];
    points.push({
      time,
      requests: list.reduce((n, p) => n + p.requests, 0),
      p50: weighted(list.map(p => ({ value: p.p50_ms, weight: p.requests }))),
      p95: weighted(list.map(p => ({ value: p.p95_ms, weight: p.requests })))
    });
  }
  // The current second is still filling: the rate counts the ones before it.
  const recent = points.slice(-RATE_SECONDS - 1, -1);
  const rate = recent.reduce((n, p) => n + p.requests, 0) / RATE_SECONDS;
  return {
    points,
    p50: weighted(overall.map(o => ({ value: o.p50, weight: o.weight }))),
    p95: weighted(overall.map(o => ({ value: o.p95, weight: o.weight }))),
    requests,
    errors,
    rate
  };
}

export function formatMs(value: number | null): string {
  if (value === null) {
    return '–';
  }
  if (value >= 100) {
    return `${value.toFixed(0)} ms`;
  }
  if (value >= 10) {
    return `${value.toFixed(1)} ms`;
  }
  return `${value.toFixed(2)} ms`;
}

export function formatRate(value: number): string {
  return value >= 10 ? `${value.toFixed(0)} req/s` : `${value.toFixed(1)} req/s`;
}
