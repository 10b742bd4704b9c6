// The duplicate review: the served index's items searched for copies of one picture, as a background job that
// this view follows; each group shows its keeper first and why each copy matched. Moving copies aside is offered
// only by a server started with --move-duplicates-to (the move plan and checks of `simengine dedup --move-to`).
import { el, fmt, getJson, itemCard, say } from "/static/common.js";

const POLL_MS = 1000;

function why(member) {
  if (member.kind === "exact") return "exact copy (same bytes)";
  const parts = [`backbone ${fmt(member.backbone)}`, `layout ${fmt(member.layout)}`];
  if (member.matches !== null && member.matches !== undefined) parts.push(`${member.matches} keypoint matches`);
  return `near copy: ${parts.join(", ")}`;
}

export async function render(view) {
  const copies = el("select", { id: "copies", name: "copies" }, ...["edited", "resized", "exact"].map((v) => el("option", { value: v }, v)));
  const keep = el("select", { id: "keep", name: "keep" }, ...["largest", "oldest", "newest", "first", "original"].map((v) => el("option", { value: v }, v)));
  const start = el("button", { type: "button", id: "find-duplicates" }, "Find duplicates");
  const status = el("p", { id: "dedup-status", role: "status", ariaLive: "polite" });
  const groups = el("div", { id: "groups" });
  view.append(el("h2", {}, "Duplicates"),
    el("p", {}, "Copies of one picture among the indexed items: exact, resized, recompressed, cropped, recoloured or watermarked."),
    el("div", {}, el("label", { htmlFor: "copies" }, "copies "), copies, " ", el("label", { htmlFor: "keep" }, "keeper "), keep, " ", start),
    status, groups);
  let timer = null;

  async function follow() {
    const job = await getJson("/v1/dedup");
    if (job.state === "running") {
      say(status, `Searching ${job.items} items for copies… ${job.elapsed_s} s`);
      if (view.isConnected) timer = setTimeout(() => follow().catch((e) => say(status, e.message, true)), POLL_MS);
    } else if (job.state === "failed") {
      say(status, `The search failed: ${job.error}`, true);
    } else if (job.state === "done") {
      show(job);
    } else if (job.state === "idle") {
      say(status, "No search has run on this server yet.");
    }
  }

  function show(job) {
    const report = job.report;
    say(status, `${report.groups} groups, ${report.duplicates} copies among ${report.images} items (${report.copies} copies counted, keeper: ${report.keep}; ${report.seconds} s)`);
    const byPath = (g) => [g.keeper, ...g.duplicates];
    const moveButton = el("button", { type: "button", id: "move", disabled: true }, "Move the copies of the checked groups aside");
    const result = el("p", { id: "move-result", role: "status" });
    const choices = [];
    groups.replaceChildren(...report.duplicate_groups.map((g, n) => {
      const members = byPath(g);
      const row = el("div", { className: "row" });
      let keeperId = g.keeper.item_id;
      members.forEach((m, i) => {
        const item = { id: m.item_id, path: m.path, label: null };
        const card = itemCard(item, [i === 0 ? el("span", { className: "badge" }, "keeper") : why(m)], i === 0 ? "keeper" : "");
        card.querySelector("strong").textContent = i === 0 ? "keeper" : "copy";
        if (job.moves_allowed) {
          const radio = el("input", { type: "radio", name: `keeper-${n}`, value: m.item_id, checked: i === 0, ariaLabel: `keep item ${m.item_id}` });
          radio.addEventListener("change", () => { keeperId = m.item_id; });
          row.append(el("div", {}, card, el("label", {}, radio, " keep this one")));
        } else row.append(card);
      });
      const chosen = el("input", { type: "checkbox", ariaLabel: `move the copies of group ${n + 1}` });
      chosen.addEventListener("change", () => { moveButton.disabled = !choices.some((c) => c.box.checked); });
      choices.push({ n, box: chosen, keeper: () => keeperId });
      const head = el("h3", {}, `Group ${n + 1}: ${members.length} pictures`);
      if (job.moves_allowed) head.append(" ", el("label", {}, chosen, " move its copies"));
      return el("section", { className: "group", ariaLabel: `group ${n + 1}` }, head, row);
    }));
    if (!report.duplicate_groups.length) return;
    if (!job.moves_allowed) {
      groups.append(el("p", { className: "muted", id: "moves-off" }, "Moving copies aside is off on this server: start it with --move-duplicates-to FOLDER to allow it, or use `simengine dedup --move-to`."));
      return;
    }
    moveButton.addEventListener("click", async () => {
      const keepers = Object.fromEntries(choices.filter((c) => c.box.checked).map((c) => [c.n, c.keeper()]));
      try {
        const done = await getJson("/v1/dedup/move", { method: "POST", body: JSON.stringify({ keepers }), headers: { "Content-Type": "application/json" } });
        say(result, `Moved ${done.moved.length} files aside and removed them from the index` +
          (done.left.length ? `; ${done.left.length} left in place (${done.left[0].path}: ${done.left[0].reason})` : "") +
          ". Find duplicates again to review the rest.");
        moveButton.disabled = true;
        groups.querySelectorAll("input").forEach((input) => { input.disabled = true; }); // this review is spent
      } catch (e) { say(result, e.message, true); }
    });
    groups.append(moveButton, result);
  }

  start.addEventListener("click", async () => {
    try {
      const q = new URLSearchParams({ copies: copies.value, keep: keep.value });
      await getJson(`/v1/dedup?${q}`, { method: "POST" });
      groups.replaceChildren();
      await follow();
    } catch (e) { say(status, e.message, true); }
  });
  await follow();
  return () => clearTimeout(timer);
}
