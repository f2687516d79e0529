/** A uPlot line chart of a live Series over the last five minutes. */
import uPlot from 'uplot';
import { useEffect, useRef } from 'preact/hooks';
import { WINDOW_S, type Series } from './live.js';
import { num } from './format.js';

export interface Line {
  label: string;
  stroke: string;
  dash?: number[];
}

interface Props {
  testid: string;
  title: string;
  unit: string;
  lines: Line[];
  series: Series;
  /** Changes when the series has new points. */
  version: number;
  digits?: number;
  height?: number;
}

const AXIS = '#3d4450';
const GRID = '#e2e5ea';

function niceMax(max: number | null): number {
  if (max === null || !Number.isFinite(max) || max <= 0) return 1;
  const m = max * 1.15;
  const p = 10 ** Math.floor(Math.log10(m));
  return Math.ceil(m / p) * p;
}

export function Chart({ testid, title, unit, lines, series, version, digits = 1, height = 200 }: Props) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const el = box.current!;
    const width = () => Math.max(240, el.clientWidth || 600);
    const axis = { stroke: AXIS, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 } };
    const opts: uPlot.Options = {
      width: width(),
      height,
      series: [
        {},
        ...lines.map((l): uPlot.Series => ({
          label: l.label,
          stroke: l.stroke,
          width: 2,
          dash: l.dash,
          points: { show: false },
          value: (_u, v) => (v === null ? '—' : `${num(v, digits)} ${unit}`),
        })),
      ],
      scales: {
        x: {
          time: true,
          range: (_u, _min, max) => {
            const end = max ?? Date.now() / 1000;
            return [end - WINDOW_S, end];
          },
        },
        y: { range: (_u, _min, max) => [0, niceMax(max)] },
      },
      axes: [{ ...axis, space: 80 }, { ...axis, size: 56 }],
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
    };
    const u = new uPlot(opts, series.cols as uPlot.AlignedData, el);
    plot.current = u;
    const ro = new ResizeObserver(() => {
      const w = width();
      if (w !== u.width) u.setSize({ width: w, height });
    });
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [series]);

  useEffect(() => {
    plot.current?.setData(series.cols as uPlot.AlignedData);
  }, [series, version]);

  const latest = lines.map((l, i) => `${l.label} ${num(series.last(i), digits)} ${unit}`).join(' · ');
  return (
    <figure class="chart" data-testid={testid} data-points={series.length} data-last={series.last(0) ?? ''}>
      <figcaption>{title}</figcaption>
      <div class="chart-box" ref={box} aria-hidden="true" />
      <p class="chart-latest">Latest: {series.length ? latest : 'no data yet'}</p>
    </figure>
  );
}
