// Search by image: one upload for its verified neighbours, two or three to compare them.
import { answerText, blobUrl, el, fmt, getJson, indexColumns, neighbourCard, say, table } from "/static/common.js";

const MAX_FILES = 3;

export function render(view) {
  let files = [];
  const input = el("input", { id: "files", type: "file", accept: "image/*", multiple: true });
  const drop = el("div", { className: "drop", id: "drop" }, el("label", { htmlFor: "files" }, "Images "), input,
    el("p", {}, "or drop files here"));
  const k = el("input", { id: "k", type: "number", min: 1, max: 100, value: 8 });
  const go = el("button", { id: "go", type: "button" }, "Ask");
  const clear = el("button", { id: "clear", type: "button" }, "Clear");
  const chosen = el("div", { className: "row", id: "chosen", ariaLabel: "chosen images" });
  const answer = el("div", { id: "answer", className: "answer", role: "status", ariaLive: "polite" });
  const details = el("div", { id: "details" });
  const results = el("div", { className: "row", id: "results", ariaLabel: "neighbours" });
  view.append(el("h2", {}, "Search by image"),
    el("p", {}, "Choose or drop ", el("strong", {}, "one"), " image to see its nearest neighbours, or ",
      el("strong", {}, "two or three"), " to compare them."),
    drop, chosen, el("div", {}, el("label", { htmlFor: "k" }, "Neighbours "), k, " ", go, clear), answer, details,
    results);

  function setFiles(list) {
    files = Array.from(list);
    chosen.replaceChildren(...files.map((f, i) =>
      el("div", { className: "chosen" }, el("img", { src: blobUrl(f), alt: `image ${i + 1}: ${f.name}` }), `${i + 1}. ${f.name}`)));
    say(answer, files.length > MAX_FILES
      ? `${files.length} files chosen: choose one to see its neighbours, or two or three to compare. Nothing was sent.`
      : "", files.length > MAX_FILES);
    go.disabled = files.length > MAX_FILES;
  }

  async function ask() {
    details.replaceChildren();
    results.replaceChildren();
    if (files.length === 0) { say(answer, "Choose an image first."); return; }
    if (files.length > MAX_FILES) return;
    say(answer, "…");
    const form = new FormData();
    let url;
    if (files.length === 1) {
      form.append("image", files[0]);
      url = `/v1/search?k=${encodeURIComponent(k.value || 5)}`;
    } else {
      files.forEach((f) => form.append("images", f));
      url = files.length === 2 ? "/v1/pair" : "/v1/triplet";
    }
    const body = await getJson(url, { method: "POST", body: form });
    const classes = (await indexColumns()).labelled;
    if (files.length === 1) {
      const verified = `${body.verified_count} of ${body.neighbours.length} neighbours verified`;
      say(answer, !classes ? verified
        : body.predicted_class ? `Predicted class: ${body.predicted_class} (${body.votes} of the ${body.verified_count} verified neighbours)`
          : `No predicted class (${verified})`);
      results.replaceChildren(...body.neighbours.map(neighbourCard));
    } else if (files.length === 2) {
      say(answer, answerText(body, true, classes));
      details.replaceChildren(table([], [
        ["distance", `${fmt(body.distance)} (threshold ${fmt(body.distance_threshold)})`],
        ["pair-head p", fmt(body.head_probability)],
        [`decision (${body.decision})`, `${fmt(body.score)} vs ${fmt(body.threshold)}${classes ? "" : " (threshold estimated)"}`],
      ]));
    } else {
      say(answer, answerText(body, false, classes));
      details.replaceChildren(table(["pair", "distance", "pair-head p", "match"], body.pairs.map((p) =>
        [`${p.pair[0] + 1}–${p.pair[1] + 1}`, fmt(p.distance), fmt(p.head_probability), p.match ? "yes" : "no"])));
    }
  }

  input.addEventListener("change", (e) => setFiles(e.target.files));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => setFiles(e.dataTransfer.files));
  clear.addEventListener("click", () => {
    input.value = "";
    setFiles([]);
    details.replaceChildren();
    results.replaceChildren();
  });
  go.addEventListener("click", () => ask().catch((e) => say(answer, e.message || String(e), true)));
}
