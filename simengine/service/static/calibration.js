// What the thresholds stand on: score histograms of same- and different-label pairs drawn from the index's
// labelled items, the ROC curve, and the chosen thresholds marked on both; "estimated" without labels.
import { el, fmt, getJson, svg, table } from "/static/common.js";

const W = 460, H = 260, PAD = 36;

function axes(xLabel, yLabel) {
  return [svg("line", { x1: PAD, y1: H - PAD, x2: W - 8, y2: H - PAD, stroke: "#333" }),
    svg("line", { x1: PAD, y1: 8, x2: PAD, y2: H - PAD, stroke: "#333" }),
    svg("text", { x: W / 2, y: H - 6, "text-anchor": "middle" }, xLabel),
    svg("text", { x: 10, y: H / 2, transform: `rotate(-90 10 ${H / 2})`, "text-anchor": "middle" }, yLabel)];
}

function histogram(c) {
  const lo = c.edges[0], hi = c.edges[c.edges.length - 1], top = Math.max(...c.same, ...c.different, 1);
  const x = (v) => PAD + ((v - lo) / (hi - lo || 1)) * (W - PAD - 8), y = (n) => H - PAD - (n / top) * (H - PAD - 8);
  const bars = [];
  for (const [counts, colour, name] of [[c.different, "#d62728", "different"], [c.same, "#2ca02c", "same"]]) {
    counts.forEach((n, i) => {
      if (n) bars.push(svg("rect", { x: x(c.edges[i]), y: y(n), width: Math.max(1, x(c.edges[i + 1]) - x(c.edges[i]) - 1), height: H - PAD - y(n), fill: colour, "fill-opacity": 0.55 }, svg("title", {}, `${name}: ${n}`)));
    });
  }
  const t = x(c.threshold);
  return svg("svg", { class: "plot", id: "histogram", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "score histograms of same and different pairs" },
    ...axes(`${c.mode} score`, "pairs"), ...bars,
    svg("line", { x1: t, y1: 8, x2: t, y2: H - PAD, stroke: "#000", "stroke-dasharray": "4 3" }),
    svg("text", { x: t + 4, y: 18 }, `threshold ${fmt(c.threshold)}`),
    svg("text", { x: W - 10, y: 18, "text-anchor": "end", fill: "#2ca02c" }, "same"),
    svg("text", { x: W - 10, y: 32, "text-anchor": "end", fill: "#d62728" }, "different"));
}

function roc(c) {
  const x = (v) => PAD + v * (W - PAD - 8), y = (v) => H - PAD - v * (H - PAD - 8);
  const d = c.roc.fpr.map((f, i) => `${i ? "L" : "M"}${x(f).toFixed(1)},${y(c.roc.tpr[i]).toFixed(1)}`).join("");
  const at = c.at_threshold;
  return svg("svg", { class: "plot", id: "roc", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "ROC curve" },
    ...axes("false accept rate", "true accept rate"),
    svg("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), stroke: "#bbb", "stroke-dasharray": "3 3" }),
    svg("path", { d, fill: "none", stroke: "#1f77b4", "stroke-width": 2 }),
    svg("circle", { cx: x(at.fpr), cy: y(at.tpr), r: 5, fill: "#000" }, svg("title", {}, "the threshold")),
    svg("text", { x: x(at.fpr) + 8, y: y(at.tpr) + 14 }, `threshold: ${fmt(at.tpr)} accepted, ${fmt(at.fpr)} false`),
    svg("text", { x: W - 10, y: H - PAD - 8, "text-anchor": "end" }, `AUC ${fmt(c.auc)}`));
}

export async function render(view) {
  const c = await getJson("/v1/calibration");
  view.append(el("h2", {}, "Thresholds"));
  const facts = [["decision", c.mode], ["pair threshold", fmt(c.threshold)], ["triplet threshold", fmt(c.triplet_threshold)],
    ["how they were obtained", c.source]];
  if (c.interval) facts.splice(2, 0, ["95 % interval of the pair threshold", `${fmt(c.interval[0])} to ${fmt(c.interval[1])}`]);
  if (c.estimated) {
    view.append(el("p", { id: "estimated", className: "answer" }, "Estimated: this index has too few labels to calibrate its thresholds on, so they are the model's own."));
  }
  if (c.pairs) {
    facts.push(["pairs drawn", `${c.pairs} balanced pairs from ${c.drawn_from}`],
      ["at the threshold", `accuracy ${fmt(c.at_threshold.accuracy)}, true accepts ${fmt(c.at_threshold.tpr)}, false accepts ${fmt(c.at_threshold.fpr)}`]);
    view.append(el("div", { className: "row" }, histogram(c), roc(c)));
  }
  view.append(table([], facts));
}
