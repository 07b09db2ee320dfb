// Inline SVG charts: a line chart (learning curves) and the lineage graph.

import { h, num, s } from "./api.js";

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw || 1));
  const norm = raw / mag;
  return (norm >= 5 ? 10 : norm >= 2 ? 5 : norm >= 1 ? 2 : 1) * mag;
}

function ticks(lo, hi, count) {
  if (lo === hi) { lo -= 1; hi += 1; }
  const step = niceStep(hi - lo, count);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

// series: [{name, points: [[x, y], ...], color, dashed}]; markers: [{x, label, color}]
export function lineChart({ series, markers = [], xLabel = "step", yLabel = "loss", width = 640, height = 280 }) {
  const pad = { l: 56, r: 16, t: 28, b: 40 };
  const all = series.flatMap((x) => x.points).filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${yLabel} against ${xLabel}` });
  if (!all.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis-label" }, "no points yet"));
    return svg;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  for (const m of markers) if (Number.isFinite(m.x)) { x0 = Math.min(x0, m.x); x1 = Math.max(x1, m.x); }
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  const yPad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
  y0 -= yPad; y1 += yPad;
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const X = (v) => pad.l + ((v - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const Y = (v) => height - pad.b - ((v - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  const grid = s("g", { class: "grid" });
  for (const t of ticks(y0, y1, 5)) {
    if (t < y0 || t > y1) continue;
    grid.append(s("line", { x1: pad.l, x2: width - pad.r, y1: Y(t), y2: Y(t) }),
      s("text", { x: pad.l - 6, y: Y(t) + 4, "text-anchor": "end", class: "tick" }, num(t, 3)));
  }
  for (const t of ticks(x0, x1, 6)) {
    if (t < x0 || t > x1 || (Number.isInteger(x0) && !Number.isInteger(t))) continue;
    grid.append(s("line", { x1: X(t), x2: X(t), y1: height - pad.b, y2: height - pad.b + 4 }),
      s("text", { x: X(t), y: height - pad.b + 16, "text-anchor": "middle", class: "tick" }, num(t, 2)));
  }
  svg.append(grid,
    s("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b }),
    s("line", { class: "axis", x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b }),
    s("text", { x: (pad.l + width - pad.r) / 2, y: height - 6, "text-anchor": "middle", class: "axis-label" }, xLabel),
    s("text", { x: 14, y: (pad.t + height - pad.b) / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(-90 14 ${(pad.t + height - pad.b) / 2})` }, yLabel));
  for (const m of markers) {
    if (!Number.isFinite(m.x)) continue;
    svg.append(s("g", { class: "marker" },
      s("line", { x1: X(m.x), x2: X(m.x), y1: pad.t, y2: height - pad.b, stroke: m.color || "#888" }),
      s("text", { x: X(m.x) + 4, y: pad.t + 10, class: "tick", fill: m.color || "#888" }, m.label)));
  }
  let legendX = pad.l;
  series.forEach((line, i) => {
    const color = line.color || ["#2f6fdf", "#e07b24", "#2a9d63", "#b03fb0"][i % 4];
    const pts = line.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    if (!pts.length) return;
    const g = s("g", { class: "series", "data-name": line.name });
    if (!line.pointsOnly) {
      g.append(s("polyline", { fill: "none", stroke: color, "stroke-width": 2,
        "stroke-dasharray": line.dashed ? "6 4" : null, points: pts.map((p) => `${X(p[0])},${Y(p[1])}`).join(" ") }));
    }
    if (pts.length <= 40 || line.pointsOnly) {
      for (const p of pts) {
        // Points-only series (checkpoints) are rings, so the line they sit on stays visible.
        g.append(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: line.pointsOnly ? 6 : 3,
          fill: line.pointsOnly ? "none" : color, stroke: line.pointsOnly ? color : null, "stroke-width": 2 },
        s("title", {}, `${line.name}: ${num(p[1])} at ${xLabel} ${num(p[0])}`)));
      }
    }
    svg.append(g);
    svg.append(s("rect", { x: legendX, y: 8, width: 12, height: 4, fill: color }),
      s("text", { x: legendX + 16, y: 14, class: "legend" }, line.name));
    legendX += 30 + line.name.length * 7;
  });
  return svg;
}

const KIND_COLORS = {
  source: "#e8f1fb", base: "#f3ecfb", job: "#fde8f3", prepared: "#e9f7ef", run: "#fff4e0",
  artifact: "#fdebea", version: "#e6f4f4", alias: "#fff9d6", served: "#eeeeee",
};

// graph: {nodes: [{id, kind, column, label, detail: [..]}], edges: [{from, to, label}]}
export function lineageGraph(graph, { onNode } = {}) {
  const boxW = 196, colGap = 48, rowGap = 18, lineH = 15, padX = 16, padY = 16;
  const columns = new Map();
  for (const n of graph.nodes) {
    if (!columns.has(n.column)) columns.set(n.column, []);
    columns.get(n.column).push(n);
  }
  const order = [...columns.keys()].sort((a, b) => a - b);
  const heightOf = (n) => 30 + n.detail.length * lineH;
  const colHeight = (c) => columns.get(c).reduce((sum, n) => sum + heightOf(n) + rowGap, -rowGap);
  const total = Math.max(...order.map(colHeight)) + 2 * padY;
  const width = order.length * (boxW + colGap) - colGap + 2 * padX;
  const pos = new Map();
  order.forEach((c, i) => {
    let y = padY + (total - 2 * padY - colHeight(c)) / 2;
    for (const n of columns.get(c)) {
      pos.set(n.id, { x: padX + i * (boxW + colGap), y, w: boxW, h: heightOf(n), node: n });
      y += heightOf(n) + rowGap;
    }
  });
  const svg = s("svg", { class: "lineage", viewBox: `0 0 ${width} ${total}`,
    role: "img", "aria-label": "lineage graph" },
  s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" }, s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7a90" }))));
  const edges = s("g", { class: "edges" });
  for (const e of graph.edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const forward = a.x < b.x;
    const x1 = forward ? a.x + a.w : a.x, x2 = forward ? b.x : b.x + b.w;
    const y1 = a.y + a.h / 2, y2 = b.y + b.h / 2;
    const bend = (x2 - x1) / 2;
    edges.append(s("path", { d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`,
      class: "edge", "marker-end": "url(#arrow)", "data-from": e.from, "data-to": e.to },
    s("title", {}, e.label || "")));
  }
  svg.append(edges);
  for (const { x, y, w, h: hh, node } of pos.values()) {
    const g = s("g", { class: `node ${node.kind}`, "data-id": node.id, "data-kind": node.kind, "data-label": node.label,
      tabindex: onNode ? 0 : null },
      s("rect", { x, y, width: w, height: hh, rx: 8, fill: KIND_COLORS[node.kind] || "#fff" }),
      s("text", { x: x + 10, y: y + 14, class: "node-kind" }, node.kind),
      s("text", { x: x + 10, y: y + 27, class: "node-label" }, clip(node.label, 26)),
      node.detail.map((d, i) => s("text", { x: x + 10, y: y + 27 + (i + 1) * lineH, class: "node-detail" }, clip(d, 31))),
      s("title", {}, [node.label, ...node.detail].join("\n")));
    if (onNode) {
      g.addEventListener("click", () => onNode(node));
      g.style.cursor = "pointer";
    }
    svg.append(g);
  }
  // Scales down to the card's width, never up: boxes keep their drawn size on a wide screen.
  svg.style.maxWidth = `${width}px`;
  return h("div", { class: "graph-scroll" }, svg);
}

function clip(text, n) {
  text = String(text ?? "");
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}
