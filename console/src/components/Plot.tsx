// One metric over time, drawn with uPlot; the points may grow while it is shown.

import { useEffect, useRef } from "react";
import uPlot from "uplot";

export interface Series {
  /** Seconds since the epoch, ascending. */
  xs: number[];
  ys: number[];
}

export function Plot(props: { metric: string; unit: string; series: Series; from: number; to: number }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const { xs, ys } = props.series;

  useEffect(() => {
    const el = box.current!;
    const label = props.unit ? `${props.metric} (${props.unit})` : props.metric;
    const u = new uPlot(
      {
        width: Math.max(240, el.clientWidth),
        height: 220,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        axes: [{}, { label, size: 60 }],
        series: [{}, { label, stroke: "#0b6e4f", width: 2, points: { show: true, size: 4 } }],
      },
      [[], []],
      el,
    );
    plot.current = u;
    const resize = new ResizeObserver(() => u.setSize({ width: Math.max(240, el.clientWidth), height: 220 }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [props.metric, props.unit]);

  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    u.setData([xs, ys], false);
    u.setScale("x", { min: props.from, max: Math.max(props.to, xs[xs.length - 1] ?? props.to) });
  }, [xs, ys, props.from, props.to]);

  const last = ys[ys.length - 1];
  return (
    <figure className="plot" data-metric={props.metric} data-points={xs.length}>
      <figcaption>
        {props.metric}
        {last !== undefined && (
          <span className="value">
            {" "}
            {formatValue(last)} {props.unit}
          </span>
        )}
        <span className="sr-only">, {xs.length} points shown</span>
      </figcaption>
      <div ref={box} className="canvas" role="img" aria-label={`${props.metric} over time, ${xs.length} points`} />
    </figure>
  );
}

export function formatValue(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}
