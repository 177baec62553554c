//! A small inline-SVG time chart: stacked bars and/or lines over buckets,
//! with a hover read-out. No chart library.
import { useState } from "preact/hooks";
import { niceMax } from "../lib/activity";
import { formatClock } from "../lib/format";

export interface Series {
  label: string;
  /** CSS colour. */
  color: string;
  kind: "bar" | "line";
  /** One value per bucket; undefined leaves a gap (lines) or nothing (bars). */
  values: (number | undefined)[];
}

export interface TimeChartProps {
  starts: number[];
  bucketMs: number;
  series: Series[];
  format: (v: number) => string;
  /** Label of the whole window for the x axis, e.g. "5m". */
  windowLabel: string;
  height?: number;
  /** Smallest y-axis top, so an idle chart still has a sensible scale. */
  minTop?: number;
  /** Shown over the plot when every value is zero or missing. */
  emptyText?: string;
  /** What the chart shows, in words: its text alternative for screen readers. */
  ariaLabel: string;
}

const W = 640;
const PAD_L = 48;
const PAD_R = 8;
const PAD_T = 10;
const PAD_B = 22;

export function TimeChart({ starts, bucketMs, series, format, windowLabel, height = 170, minTop = 1, emptyText, ariaLabel }: TimeChartProps) {
  const [hover, setHover] = useState<number | undefined>();
  const n = starts.length;
  const H = height;
  const plotW = W - PAD_L - PAD_R;
  const plotH = H - PAD_T - PAD_B;
  const bars = series.filter((s) => s.kind === "bar");
  const lines = series.filter((s) => s.kind === "line");
  let max = 0;
  for (let i = 0; i < n; i++) {
    let stack = 0;
    for (const s of bars) stack += s.values[i] ?? 0;
    max = Math.max(max, stack);
    for (const s of lines) max = Math.max(max, s.values[i] ?? 0);
  }
  const top = niceMax(Math.max(max, minTop));
  const slot = plotW / Math.max(1, n);
  const barW = Math.max(1, slot * 0.72);
  const y = (v: number) => PAD_T + plotH - (v / top) * plotH;
  const x = (i: number) => PAD_L + i * slot;

  const onMove = (e: MouseEvent) => {
    const svg = e.currentTarget as SVGSVGElement;
    const r = svg.getBoundingClientRect();
    const px = ((e.clientX - r.left) / r.width) * W;
    const i = Math.floor((px - PAD_L) / slot);
    setHover(i >= 0 && i < n ? i : undefined);
  };

  const linePath = (s: Series) => {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === undefined) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${(x(i) + slot / 2).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    return d;
  };

  return (
    <div class="chart">
      <svg
        viewBox={`0 0 ${W} ${H}`}
        class="chart-svg"
        role="img"
        aria-label={ariaLabel}
        onMouseMove={onMove}
        onMouseLeave={() => setHover(undefined)}
      >
        {[0, 0.5, 1].map((f) => (
          <g key={f}>
            <line class="grid" x1={PAD_L} x2={W - PAD_R} y1={y(top * f)} y2={y(top * f)} />
            <text class="axis" x={PAD_L - 6} y={y(top * f) + 4} text-anchor="end">
              {format(top * f)}
            </text>
          </g>
        ))}
        {hover !== undefined ? <rect class="hover-col" x={x(hover)} y={PAD_T} width={slot} height={plotH} /> : null}
        {starts.map((_, i) => {
          let acc = 0;
          return bars.map((s) => {
            const v = s.values[i] ?? 0;
            if (v <= 0) return null;
            const y0 = y(acc);
            acc += v;
            const y1 = y(acc);
            return (
              <rect
                key={`${s.label}-${i}`}
                x={x(i) + (slot - barW) / 2}
                y={y1}
                width={barW}
                height={Math.max(0.5, y0 - y1)}
                fill={s.color}
                rx={1}
              />
            );
          });
        })}
        {lines.map((s) => (
          <path key={s.label} d={linePath(s)} fill="none" stroke={s.color} stroke-width={2} stroke-linejoin="round" />
        ))}
        <text class="axis" x={PAD_L} y={H - 6}>
          −{windowLabel}
        </text>
        <text class="axis" x={W - PAD_R} y={H - 6} text-anchor="end">
          now
        </text>
      </svg>
      {max === 0 && emptyText ? <div class="chart-empty muted small">{emptyText}</div> : null}
      <div class="chart-legend">
        {series.map((s) => (
          <span key={s.label} class="legend-item">
            <span class={`legend-swatch ${s.kind}`} style={{ background: s.color }} />
            {s.label}
            {hover !== undefined ? <b>{s.values[hover] === undefined ? "—" : format(s.values[hover] ?? 0)}</b> : null}
          </span>
        ))}
        {hover !== undefined && starts[hover] !== undefined ? (
          <span class="legend-time">
            {formatClock(starts[hover]).slice(0, 8)}–{formatClock((starts[hover] ?? 0) + bucketMs).slice(0, 8)}
          </span>
        ) : null}
      </div>
    </div>
  );
}
