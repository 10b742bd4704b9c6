// One item: its image, path, id, label and metadata, and its nearest neighbours verified by the pair head; a
// neighbour opens its own view, and Back returns.
import { describe, el, getJson, neighbourCard, say, table, thumbnail, tray } from "/static/common.js";

export async function render(view, route) {
  const id = Number(route.arg);
  const item = await getJson(`/v1/items/${encodeURIComponent(route.arg)}`);
  const big = thumbnail(id, describe(item), 512);
  big.className = "big";
  big.loading = "eager";
  const rows = Object.entries(item).filter(([k]) => k !== "id").map(([k, v]) => [k, v === null ? "—" : String(v)]);
  const compare = el("button", { type: "button", id: "add-compare" }, "Add to comparison");
  compare.addEventListener("click", () => tray.add(item));
  const answer = el("p", { id: "neighbour-answer", className: "answer", role: "status", ariaLive: "polite" }, "…");
  const grid = el("div", { className: "grid", id: "neighbours", ariaLabel: "verified neighbours" });
  view.append(el("h2", { id: "item-title" }, describe(item)),
    el("div", { className: "item" }, big, el("div", {}, table([], [["id", String(item.id)], ...rows]), el("p", {}, compare))),
    el("h2", {}, "Nearest neighbours"), answer, grid);
  const form = new FormData();
  form.append("id", id);
  const found = await getJson("/v1/search?k=12", { method: "POST", body: form });
  say(answer, `${found.verified_count} of ${found.neighbours.length} neighbours verified` +
    (found.predicted_class ? ` · predicted label ${found.predicted_class} (${found.votes} votes)` : ""));
  grid.replaceChildren(...found.neighbours.map(neighbourCard));
}
