// The gallery: the index's live items a page at a time, filtered by typed controls built from its columns (the
// server binds every value; no SQL leaves the page), sorted by any column, with counts per label. The state lives
// in the URL, so Back returns to the same page and filters. A selection made on the map arrives as `sel`.
import { el, indexColumns, itemCard, postJson, say, tray } from "/static/common.js";

export const PAGE = 60;
export const SELECTION_KEY = "simengine-selection";
const STANDARD = ["id", "path", "label", "sha256", "split", "added_at", "width", "height"]; // cards show others

function hashFor(state) {
  const q = new URLSearchParams();
  if (state.offset) q.set("offset", state.offset);
  if (state.sort !== "id") q.set("sort", state.sort);
  if (state.descending) q.set("desc", "1");
  if (state.filters.length) q.set("f", JSON.stringify(state.filters));
  if (state.selection) q.set("sel", "1");
  return `#/gallery${q.toString() ? `?${q}` : ""}`;
}

export async function render(view, route) {
  const p = route.params;
  const state = {
    offset: Math.max(0, Number(p.get("offset")) || 0), sort: p.get("sort") || "id", descending: p.get("desc") === "1",
    filters: JSON.parse(p.get("f") || "[]"), selection: p.get("sel") === "1",
  };
  const go = (changes) => { location.hash = hashFor({ ...state, offset: 0, ...changes }); };
  const filters = [...state.filters];
  let ids = null;
  if (state.selection) {
    ids = JSON.parse(sessionStorage.getItem(SELECTION_KEY) || "[]");
    filters.push({ column: "id", op: "in", value: ids });
  }
  // The page and the columns are asked for together: neither waits on the other.
  const asked = postJson("/v1/items/page", { filters, sort: state.sort, descending: state.descending, offset: state.offset, limit: PAGE });
  const info = await indexColumns(true);
  const columns = info.columns;
  const valueOf = (column, op) => (state.filters.find((f) => f.column === column && f.op === op) || {}).value;
  const setFilter = (column, op, value) => {
    const rest = state.filters.filter((f) => !(f.column === column && f.op === op));
    go({ filters: value === "" || value === undefined ? rest : [...rest, { column, op, value }] });
  };

  const controls = el("form", { className: "filters", ariaLabel: "filters" });
  controls.addEventListener("submit", (e) => e.preventDefault());
  for (const c of columns) {
    if (c.kind === "number") {
      for (const op of ["min", "max"]) {
        const input = el("input", { type: "number", step: "any", value: valueOf(c.name, op) ?? "", name: `${c.name}-${op}` });
        input.addEventListener("change", () => setFilter(c.name, op, input.value === "" ? "" : Number(input.value)));
        controls.append(el("label", {}, `${c.name} ${op === "min" ? "≥" : "≤"}`, input));
      }
    } else if (c.values) {
      // Options by position, so that a number is sent as a number (a column may hold both).
      const select = el("select", { name: c.name },
        el("option", { value: "" }, "any"), ...c.values.map(([v, n], i) => el("option", { value: String(i) }, `${v} (${n})`)));
      const current = c.values.findIndex(([v]) => v === valueOf(c.name, "eq"));
      select.value = current < 0 ? "" : String(current);
      select.addEventListener("change", () => setFilter(c.name, "eq", select.value === "" ? "" : c.values[Number(select.value)][0]));
      controls.append(el("label", {}, c.name, select));
    } else {
      const input = el("input", { type: "search", value: valueOf(c.name, "contains") ?? "", name: `${c.name}-contains`, placeholder: "contains…" });
      input.addEventListener("change", () => setFilter(c.name, "contains", input.value));
      controls.append(el("label", {}, c.name, input));
    }
  }
  const sort = el("select", { name: "sort" }, el("option", { value: "id" }, "id"),
    ...columns.map((c) => el("option", { value: c.name }, c.name)));
  sort.value = state.sort;
  sort.addEventListener("change", () => go({ sort: sort.value }));
  const order = el("select", { name: "order" }, el("option", { value: "asc" }, "ascending"), el("option", { value: "desc" }, "descending"));
  order.value = state.descending ? "desc" : "asc";
  order.addEventListener("change", () => go({ descending: order.value === "desc" }));
  const reset = el("button", { type: "button" }, "Clear filters");
  reset.addEventListener("click", () => go({ filters: [], selection: false }));
  controls.append(el("label", {}, "sort by", sort), el("label", {}, "order", order), reset);

  const labels = columns.find((c) => c.name === "label");
  const chips = el("div", { className: "chips", ariaLabel: "items per label" });
  if (labels && labels.values && info.labelled) {
    const current = valueOf("label", "eq");
    for (const [v, n] of labels.values) {
      const chip = el("button", { type: "button", ariaPressed: String(current === v) }, `${v} · ${n}`);
      chip.addEventListener("click", () => setFilter("label", "eq", current === v ? "" : v));
      chips.append(chip);
    }
  }

  let note = null;
  if (state.selection) {
    const drop = el("button", { type: "button" }, "show all");
    drop.addEventListener("click", () => go({ selection: false }));
    note = el("p", { id: "selection" }, `${ids.length} items selected on the map `, drop);
  }
  const status = el("p", { id: "gallery-status", role: "status", ariaLive: "polite" }, "…");
  const grid = el("div", { className: "grid", id: "gallery" });
  const prev = el("button", { type: "button", id: "prev" }, "← Previous");
  const next = el("button", { type: "button", id: "next" }, "Next →");
  view.append(el("h2", {}, "Gallery"), controls, chips, ...(note ? [note] : []), el("div", { className: "pager" }, prev, next, status), grid);

  const page = await asked;
  const last = Math.min(page.offset + page.items.length, page.total);
  say(status, page.total ? `items ${page.offset + 1}–${last} of ${page.total}` : "no items match");
  prev.disabled = page.offset === 0;
  next.disabled = last >= page.total;
  prev.addEventListener("click", () => go({ offset: Math.max(0, state.offset - PAGE) }));
  next.addEventListener("click", () => go({ offset: state.offset + PAGE }));
  grid.replaceChildren(...page.items.map((item) => {
    const extra = Object.entries(item).filter(([k, v]) => !STANDARD.includes(k) && v !== null).slice(0, 3);
    const card = itemCard(item, extra.map(([k, v]) => `${k}: ${v}`));
    const pick = el("button", { type: "button", className: "pick", title: "add to the comparison", ariaLabel: `compare ${item.label ?? "item"} ${item.id}` }, "+");
    pick.addEventListener("click", (e) => { e.preventDefault(); tray.add(item); });
    card.querySelector("figure").append(pick);
    return card;
  }));
}
