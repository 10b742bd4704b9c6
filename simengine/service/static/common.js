// What every view shares: element builders, the API client (with the key when the server needs one), thumbnails,
// item cards and the comparison tray. Every text from a user or the server (file names, labels, metadata,
// messages) is inserted with textContent or as an attribute value, never as HTML; the CSP allows no inline script.
export const $ = (id) => document.getElementById(id);
export const fmt = (x) => Number(x).toFixed(3);

export function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

export const fileName = (path) => String(path || "").split(/[\\/]/).pop();

export function apiKey() { return sessionStorage.getItem("simengine-key") || ""; }

export class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

// fetch() of the API; a 401 shows the key field, and any error becomes an ApiError with the server's message.
export async function api(path, options = {}) {
  const key = apiKey();
  const headers = { ...(options.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("key-row").hidden = false;
    throw new ApiError("This server needs an API key: enter it above.", 401);
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = new ApiError(body.error ? body.error.message : `error ${response.status}`, response.status);
    error.retryAfter = Number(response.headers.get("Retry-After") || 0);
    throw error;
  }
  return response;
}

export const getJson = async (path, options) => (await api(path, options)).json();

export function postJson(path, body) {
  return getJson(path, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
}

// Asks until the answer is ready: a whole-index job answers 503 with Retry-After while it is being computed.
export async function whenReady(path, onWait, alive = () => true) {
  const started = performance.now();
  while (alive()) {
    try {
      return await getJson(path);
    } catch (e) {
      if (e.status !== 503 || !e.retryAfter) throw e;
      onWait(Math.round((performance.now() - started) / 1000));
      await new Promise((resolve) => setTimeout(resolve, Math.min(e.retryAfter, 2) * 1000));
    }
  }
  throw new Error("left before it was ready");
}

const objectUrls = new Set();
export function forgetBlobs() { objectUrls.forEach((u) => URL.revokeObjectURL(u)); objectUrls.clear(); }
export function blobUrl(blob) { const u = URL.createObjectURL(blob); objectUrls.add(u); return u; }

// A thumbnail served at `size` pixels: linked directly (the browser caches it) unless the server needs a key,
// which only fetch() can send.
export function thumbnail(id, alt, size = 256) {
  const img = el("img", { alt, loading: "lazy", decoding: "async" });
  const url = `/v1/items/${encodeURIComponent(id)}/thumbnail?size=${size}`;
  if (!apiKey()) {
    img.src = url;
    img.addEventListener("error", () => { img.alt = `${alt} (image unavailable)`; }, { once: true });
  } else {
    api(url).then((r) => r.blob()).then((b) => { img.src = blobUrl(b); })
      .catch(() => { img.alt = `${alt} (image unavailable)`; });
  }
  return img;
}

export function describe(item) {
  return `${item.label ?? "unlabelled"}: ${fileName(item.path)} (id ${item.id})`;
}

// A focusable card that opens the item; `lines` are extra caption lines.
export function itemCard(item, lines = [], className = "") {
  const caption = el("figcaption", {}, el("strong", {}, item.label ?? "unlabelled"), el("br"), fileName(item.path),
    el("br"), el("span", { className: "muted" }, `id ${item.id}`));
  for (const line of lines) caption.append(el("br"), line);
  const card = el("a", { className: "card-link", href: `#/item/${item.id}`, title: item.path },
    el("figure", { className: `card ${className}` }, thumbnail(item.id, describe(item)), caption));
  card.dataset.id = item.id;
  return card;
}

// A neighbour of a search: its card with its distance and whether the pair head verified it.
export function neighbourCard(n) {
  return itemCard(n, [`distance ${fmt(n.distance)}`, n.verified ? "✔ verified" : "✘ not verified"], n.verified ? "yes" : "no");
}

export function table(header, rows) {
  const lines = rows.map((cells) => el("tr", {}, ...cells.map((c, i) => el(i === 0 && !header.length ? "th" : "td", {}, c))));
  if (header.length) lines.unshift(el("tr", {}, ...header.map((h) => el("th", {}, h))));
  return el("table", {}, ...lines);
}

export function say(node, text, isError = false) {
  node.textContent = text;
  node.classList.toggle("err", isError);
}

let info = null; // /v1/columns, once per page load: whether the index holds labels, and its columns
export async function indexColumns(fresh = false) {
  if (info === null || fresh) info = await getJson("/v1/columns");
  return info;
}

// --- the comparison tray: up to three indexed items, compared as a pair or "at least two of three" ---
export const tray = {
  items: [],
  add(item) {
    if (this.items.some((i) => i.id === item.id)) return;
    if (this.items.length === 3) this.items.shift();
    this.items.push({ id: item.id, label: item.label, path: item.path });
    this.render();
  },
  clear() { this.items = []; this.render(); },
  render() {
    $("tray").hidden = this.items.length === 0;
    $("tray-items").textContent = `Compare: ${this.items.map((i, n) => `${n + 1}. ${describe(i)}`).join(" · ")}`;
    $("tray-compare").disabled = this.items.length < 2;
    $("tray-answer").textContent = this.items.length < 2 ? "choose one more" : "";
  },
  async compare() {
    const labelled = (await indexColumns()).labelled;
    const form = new FormData();
    this.items.forEach((i) => form.append("ids", i.id));
    const pair = this.items.length === 2;
    try {
      const body = await getJson(pair ? "/v1/pair" : "/v1/triplet", { method: "POST", body: form });
      say($("tray-answer"), answerText(body, pair, labelled));
    } catch (e) {
      say($("tray-answer"), e.message, true);
    }
  },
};

export function answerText(body, pair, labelled) {
  if (pair) return `${labelled ? "Same class" : "Similar"}: ${body.same ? "YES" : "NO"}`;
  const pairs = body.matching_pairs.map((p) => `${p[0] + 1}–${p[1] + 1}`).join(", ");
  const question = labelled ? "At least two share a class" : "At least two are similar";
  return body.any_match ? `${question}: YES (${pairs})` : `${question}: NO`;
}
