// Small SVG charts (no library). Every chart records what it plotted in
// window.cizoCharts[svg.id] = {kind, labels|x, series:[{name, values, points}]} so tests
// (and curious operators) can check that the picture shows the API's numbers.
"use strict";
window.cizoCharts = {};
const SVGNS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text != null) el.textContent = text;
  return el;
}

function size(svg) {
  const r = svg.getBoundingClientRect();
  return { w: Math.max(200, r.width || 300), h: Math.max(120, r.height || 180) };
}

// Vertical bars: labels[i] with values[i].
function barChart(svg, labels, values, color) {
  svg.replaceChildren();
  const { w, h } = size(svg);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const pad = { l: 36, r: 8, t: 14, b: 22 };
  const max = Math.max(1, ...values);
  const bw = (w - pad.l - pad.r) / Math.max(1, labels.length);
  const points = [];
  svg.appendChild(svgEl("line", { x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b, stroke: "#999" }));
  svg.appendChild(svgEl("text", { x: 2, y: pad.t + 4 }, String(max)));
  labels.forEach((label, i) => {
    const bh = (h - pad.t - pad.b) * values[i] / max;
    const x = pad.l + i * bw + bw * 0.15;
    const y = h - pad.b - bh;
    const rect = svgEl("rect", { x, y, width: bw * 0.7, height: bh, fill: color || "#3b7dd8",
                                 "data-label": label, "data-value": values[i] });
    svg.appendChild(rect);
    svg.appendChild(svgEl("text", { x: x + bw * 0.35, y: y - 2, "text-anchor": "middle" }, String(values[i])));
    svg.appendChild(svgEl("text", { x: x + bw * 0.35, y: h - 6, "text-anchor": "middle" }, label));
    points.push([x, y, bh]);
  });
  window.cizoCharts[svg.id] = { kind: "bar", labels: labels.slice(),
                                series: [{ name: "count", values: values.slice(), points }] };
}

// Lines over time: x are unix seconds; series [{name, values, color}], null = gap.
function lineChart(svg, x, series, opts) {
  svg.replaceChildren();
  const { w, h } = size(svg);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const pad = { l: 40, r: 8, t: 10, b: 22 };
  const all = series.flatMap((s) => s.values.filter((v) => v != null));
  const ymin = opts && opts.ymin != null ? opts.ymin : Math.min(0, ...all);
  const ymax = opts && opts.ymax != null ? opts.ymax : Math.max(1, ...all);
  const x0 = x.length ? x[0] : 0, x1 = x.length ? x[x.length - 1] : 1;
  const sx = (t) => pad.l + (w - pad.l - pad.r) * (x1 === x0 ? 0.5 : (t - x0) / (x1 - x0));
  const sy = (v) => h - pad.b - (h - pad.t - pad.b) * (v - ymin) / ((ymax - ymin) || 1);
  svg.appendChild(svgEl("line", { x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b, stroke: "#999" }));
  svg.appendChild(svgEl("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: h - pad.b, stroke: "#999" }));
  svg.appendChild(svgEl("text", { x: 2, y: pad.t + 4 }, String(Math.round(ymax))));
  svg.appendChild(svgEl("text", { x: 2, y: h - pad.b }, String(Math.round(ymin))));
  for (let d = Math.ceil(x0 / 86400) * 86400; d <= x1; d += 86400) {
    const px = sx(d);
    svg.appendChild(svgEl("line", { x1: px, y1: pad.t, x2: px, y2: h - pad.b, stroke: "#eee" }));
    svg.appendChild(svgEl("text", { x: px + 2, y: h - 6 }, new Date(d * 1000).toISOString().slice(5, 10)));
  }
  const recorded = [];
  for (const s of series) {
    const points = [];
    let path = "";
    s.values.forEach((v, i) => {
      if (v == null) return;
      const p = [sx(x[i]), sy(v)];
      points.push(p);
      path += (path ? " L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1);
    });
    svg.appendChild(svgEl("path", { d: path, fill: "none", stroke: s.color || "#3b7dd8",
                                    "stroke-width": 1.5, "data-series": s.name }));
    recorded.push({ name: s.name, values: s.values.slice(), points });
  }
  window.cizoCharts[svg.id] = { kind: "line", x: x.slice(), series: recorded };
}
