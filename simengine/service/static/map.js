// The map: every item at its 2-D projection (t-SNE, computed by the server once per index version), coloured by a
// column, drawn pixel by pixel into one canvas (100,000 points in a few milliseconds a frame). Drag to pan, wheel
// or +/- to zoom, hover for a thumbnail, click to open an item, shift-drag (or "Box select") to select points and
// open them in the gallery.
import { describe, el, getJson, indexColumns, say, thumbnail, whenReady } from "/static/common.js";
import { SELECTION_KEY } from "/static/gallery.js";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
  "#393b79", "#ad494a", "#7f7f7f"];
const NONE = "#c7c7c7";
const GRID = 128; // cells per side of the hover lookup
const HOVER_PX = 8;

const rgba = (hex) => { // as a little-endian pixel of a Uint32Array over ImageData
  const n = parseInt(hex.slice(1), 16);
  return (255 << 24 | (n & 255) << 16 | (n >> 8 & 255) << 8 | n >> 16) >>> 0;
};

export async function render(view) {
  const status = el("p", { id: "map-status", role: "status", ariaLive: "polite" }, "Loading the map…");
  view.append(el("h2", {}, "Map"), status);
  const [points, info] = await Promise.all([
    whenReady("/v1/map", (s) => say(status, `Computing the map of this index version… ${s} s (done once; it is then kept with the index)`),
      () => view.isConnected),
    indexColumns(),
  ]);
  const n = points.ids.length;
  const xs = Float32Array.from(points.x), ys = Float32Array.from(points.y);
  const colourBy = el("select", { id: "colour-by", name: "colour" },
    ...info.columns.filter((c) => c.kind === "text" && c.name !== "path").map((c) => el("option", { value: c.name }, c.name)));
  const boxMode = el("button", { type: "button", id: "box", ariaPressed: "false" }, "Box select");
  const open = el("button", { type: "button", id: "open-selection", disabled: true }, "Open selection in the gallery");
  const reset = el("button", { type: "button" }, "Reset view");
  const legend = el("div", { className: "legend", id: "legend" });
  const canvas = el("canvas", { className: "map", id: "map", tabIndex: 0, ariaLabel: `map of ${n} items; arrows pan, + and - zoom` });
  const tip = el("div", { className: "tip", hidden: true });
  view.append(el("div", {}, el("label", { htmlFor: "colour-by" }, "Colour by "), colourBy, " ", boxMode, open, reset),
    legend, el("div", { className: "map-wrap" }, canvas, tip));
  say(status, `${n} items · ${points.method} · computed in ${points.seconds} s`);
  canvas.dataset.points = n;

  const ctx = canvas.getContext("2d");
  let colours = new Uint32Array(n).fill(rgba(NONE));
  let selected = new Uint8Array(n), selectedCount = 0;
  let scale = 1, tx = 0, ty = 0, frame = null, image = null, drag = null;
  const margin = 12;

  // The hover lookup: point numbers bucketed by cell of the unit square.
  const cellOf = (x, y) => Math.min(GRID - 1, Math.floor(x * GRID)) * GRID + Math.min(GRID - 1, Math.floor(y * GRID));
  const starts = new Uint32Array(GRID * GRID + 1), order = new Uint32Array(n);
  for (let i = 0; i < n; i++) starts[cellOf(xs[i], ys[i]) + 1]++;
  for (let c = 0; c < GRID * GRID; c++) starts[c + 1] += starts[c];
  const fill = starts.slice(0, -1);
  for (let i = 0; i < n; i++) order[fill[cellOf(xs[i], ys[i])]++] = i;

  function size() {
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    canvas.height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    image = ctx.createImageData(canvas.width, canvas.height);
  }
  const span = () => Math.min(canvas.width, canvas.height) - 2 * margin;
  const left = () => (canvas.width - span()) / 2; // the unit square, centred across the canvas
  const toData = (px, py) => [(px - left() - tx) / (span() * scale), 1 - (py - margin - ty) / (span() * scale)];
  const canvasXY = (e) => { const r = canvas.getBoundingClientRect(); const k = canvas.width / r.width; return [(e.clientX - r.left) * k, (e.clientY - r.top) * k]; };

  function draw() {
    frame = null;
    const started = performance.now();
    const w = canvas.width, h = canvas.height, pixels = new Uint32Array(image.data.buffer);
    pixels.fill(0xffffffff);
    const dot = scale > 4 ? 3 : 2, s = span() * scale, x0 = left(), black = rgba("#000000");
    for (let pass = 0; pass < 2; pass++) { // selected points last, on top
      for (let i = 0; i < n; i++) {
        if ((selected[i] === 1) !== (pass === 1)) continue;
        const px = (x0 + xs[i] * s + tx) | 0, py = (margin + (1 - ys[i]) * s + ty) | 0;
        if (px < 0 || py < 0 || px > w - dot || py > h - dot) continue;
        const c = pass ? black : colours[i];
        for (let dy = 0; dy < dot; dy++) pixels.fill(c, (py + dy) * w + px, (py + dy) * w + px + dot);
      }
    }
    ctx.putImageData(image, 0, 0);
    if (drag && drag.box) {
      ctx.strokeStyle = "#06c";
      ctx.lineWidth = 2;
      ctx.strokeRect(drag.x0, drag.y0, drag.x1 - drag.x0, drag.y1 - drag.y0);
    }
    performance.measure("map-frame", { start: started });
    canvas.dataset.frames = String(Number(canvas.dataset.frames || 0) + 1);
  }
  const redraw = () => { if (frame === null) frame = requestAnimationFrame(draw); };

  async function colour() {
    const found = await getJson(`/v1/map/colours?column=${encodeURIComponent(colourBy.value)}`);
    const code = new Map(found.ids.map((id, i) => [id, found.codes[i]]));
    const palette = found.names.map((_, i) => rgba(PALETTE[i % PALETTE.length]));
    colours = Uint32Array.from(points.ids, (id) => { const c = code.get(id); return c === undefined || c < 0 ? rgba(NONE) : palette[c]; });
    legend.replaceChildren(...found.names.map((name, i) => el("span", {}, el("i"), name)));
    legend.querySelectorAll("i").forEach((dot, i) => { dot.style.background = PALETTE[i % PALETTE.length]; });
    redraw();
  }

  function nearest(px, py) {
    const [x, y] = toData(px, py), r = HOVER_PX / (span() * scale);
    let best = -1, bestD = r * r;
    const c0 = Math.max(0, Math.floor((x - r) * GRID)), c1 = Math.min(GRID - 1, Math.floor((x + r) * GRID));
    const r0 = Math.max(0, Math.floor((y - r) * GRID)), r1 = Math.min(GRID - 1, Math.floor((y + r) * GRID));
    for (let cx = c0; cx <= c1; cx++) {
      for (let cy = r0; cy <= r1; cy++) {
        const cell = cx * GRID + cy;
        for (let k = starts[cell]; k < starts[cell + 1]; k++) {
          const i = order[k], d = (xs[i] - x) ** 2 + (ys[i] - y) ** 2;
          if (d < bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  let hovered = -1;
  async function hover(e) {
    const [px, py] = canvasXY(e);
    const i = nearest(px, py);
    if (i === hovered) return;
    hovered = i;
    if (i < 0) { tip.hidden = true; canvas.style.cursor = "crosshair"; return; }
    canvas.style.cursor = "pointer";
    const id = points.ids[i];
    const item = await getJson(`/v1/items/${id}`).catch(() => null);
    if (hovered !== i || !item) return;
    tip.replaceChildren(thumbnail(id, describe(item), 128), describe(item));
    const r = canvas.getBoundingClientRect();
    tip.style.left = `${Math.min(e.clientX - r.left + 12, r.width - 170)}px`;
    tip.style.top = `${e.clientY - r.top + 12}px`;
    tip.hidden = false;
  }

  function select(x0, y0, x1, y1) {
    const [ax, ay] = toData(Math.min(x0, x1), Math.max(y0, y1)), [bx, by] = toData(Math.max(x0, x1), Math.min(y0, y1));
    selected = new Uint8Array(n);
    selectedCount = 0;
    for (let i = 0; i < n; i++) {
      if (xs[i] >= ax && xs[i] <= bx && ys[i] >= ay && ys[i] <= by) { selected[i] = 1; selectedCount++; }
    }
    open.disabled = selectedCount === 0;
    open.textContent = `Open ${selectedCount} selected in the gallery`;
    canvas.dataset.selected = selectedCount;
  }

  function zoom(factor, px, py) {
    const next = Math.min(200, Math.max(0.5, scale * factor));
    tx = px - (px - tx - left()) * (next / scale) - left();
    ty = py - (py - ty - margin) * (next / scale) - margin;
    scale = next;
    redraw();
  }

  canvas.addEventListener("pointerdown", (e) => {
    const [x, y] = canvasXY(e);
    drag = { x0: x, y0: y, x1: x, y1: y, box: e.shiftKey || boxMode.getAttribute("aria-pressed") === "true", moved: false };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) { hover(e); return; }
    const [x, y] = canvasXY(e);
    if (Math.abs(x - drag.x0) + Math.abs(y - drag.y0) > 3) drag.moved = true;
    if (!drag.box) { tx += x - drag.x1; ty += y - drag.y1; tip.hidden = true; }
    drag.x1 = x;
    drag.y1 = y;
    redraw();
  });
  canvas.addEventListener("pointerup", (e) => {
    const done = drag;
    drag = null;
    if (!done) return;
    if (done.box && done.moved) select(done.x0, done.y0, done.x1, done.y1);
    else if (!done.moved) {
      const i = nearest(...canvasXY(e));
      if (i >= 0) { location.hash = `#/item/${points.ids[i]}`; return; }
    }
    redraw();
  });
  canvas.addEventListener("pointerleave", () => { tip.hidden = true; hovered = -1; });
  canvas.addEventListener("wheel", (e) => { e.preventDefault(); zoom(Math.exp(-e.deltaY / 300), ...canvasXY(e)); }, { passive: false });
  canvas.addEventListener("keydown", (e) => {
    const step = 40, centre = [canvas.width / 2, canvas.height / 2];
    const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (moves[e.key]) { tx += moves[e.key][0]; ty += moves[e.key][1]; redraw(); } else if (e.key === "+" || e.key === "=") zoom(1.25, ...centre);
    else if (e.key === "-") zoom(0.8, ...centre);
    else return;
    e.preventDefault();
  });
  boxMode.addEventListener("click", () => boxMode.setAttribute("aria-pressed", String(boxMode.getAttribute("aria-pressed") !== "true")));
  reset.addEventListener("click", () => { scale = 1; tx = 0; ty = 0; redraw(); });
  open.addEventListener("click", () => {
    const ids = points.ids.filter((_, i) => selected[i]);
    sessionStorage.setItem(SELECTION_KEY, JSON.stringify(ids));
    location.hash = "#/gallery?sel=1";
  });
  colourBy.addEventListener("change", () => colour());
  const resized = () => { size(); redraw(); };
  window.addEventListener("resize", resized);
  size();
  await colour();
  return () => window.removeEventListener("resize", resized);
}
