// The page's logic. Every text that comes from a user or the server (file names, labels, messages) is inserted with
// textContent or as an attribute value, never as HTML; the server's CSP allows no inline script besides.
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (x) => Number(x).toFixed(3);
let files = [];
let objectUrls = [];

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function blobUrl(blob) {
  const url = URL.createObjectURL(blob);
  objectUrls.push(url);
  return url;
}

function forgetImages() {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
}

function apiHeaders() {
  const key = $("key").value || sessionStorage.getItem("simengine-key") || "";
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function say(text, isError = false) {
  $("answer").textContent = text;
  $("answer").className = isError ? "err" : "";
}

function show() {
  $("chosen").replaceChildren(...files.map((f, i) =>
    el("div", { className: "chosen" }, el("img", { src: blobUrl(f), alt: `image ${i + 1}: ${f.name}` }), `${i + 1}. ${f.name}`)));
}

function setFiles(list) { files = Array.from(list).slice(0, 3); show(); }

async function neighbourCard(n) {
  const img = el("img", { alt: `${n.label || "item"} ${n.id}` });
  const caption = el("figcaption", {}, n.label || `id ${n.id}`, el("br"), `distance ${fmt(n.distance)}`, el("br"),
    n.verified ? "✔ verified" : "✘ not verified");
  const card = el("figure", { className: `card ${n.verified ? "yes" : "no"}` }, img, caption);
  // Fetched rather than linked, so that a server with an API key serves them too.
  fetch(`/v1/items/${encodeURIComponent(n.id)}/image`, { headers: apiHeaders() })
    .then((r) => (r.ok ? r.blob() : Promise.reject(r.status)))
    .then((blob) => { img.src = blobUrl(blob); })
    .catch(() => { img.alt = `${img.alt} (image unavailable)`; });
  return card;
}

function table(header, rows) {
  const lines = rows.map((cells) => el("tr", {}, ...cells.map((c, i) => el(i === 0 && !header.length ? "th" : "td", {}, c))));
  if (header.length) lines.unshift(el("tr", {}, ...header.map((h) => el("th", {}, h))));
  return el("table", {}, ...lines);
}

let labelled = null; // whether the index holds labels (/v1/info): without them the page speaks of similarity

async function indexIsLabelled() {
  if (labelled === null) {
    const response = await fetch("/v1/info", { headers: apiHeaders() });
    if (!response.ok) return true; // asked again next time; the question's own answer says what went wrong
    const info = await response.json();
    labelled = Object.keys(info.classes || {}).some((c) => c !== "null");
  }
  return labelled;
}

async function ask() {
  say("…");
  $("details").replaceChildren();
  $("results").replaceChildren();
  if (files.length === 0) { say("Choose an image first."); return; }
  const form = new FormData();
  let url;
  if (files.length === 1) {
    form.append("image", files[0]);
    url = `/v1/search?k=${encodeURIComponent($("k").value || 5)}`;
  } else {
    files.forEach((f) => form.append("images", f));
    url = files.length === 2 ? "/v1/pair" : "/v1/triplet";
  }
  const response = await fetch(url, { method: "POST", body: form, headers: apiHeaders() });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    $("key-row").hidden = false;
    $("key").focus();
    say("This server needs an API key: enter it above and ask again.", true);
    return;
  }
  if (!response.ok) { say(body.error ? body.error.message : `error ${response.status}`, true); return; }
  if ($("key").value) sessionStorage.setItem("simengine-key", $("key").value);
  const classes = await indexIsLabelled();
  if (files.length === 1) {
    const verified = `${body.verified_count} of ${body.neighbours.length} neighbours verified`;
    say(!classes ? verified
      : body.predicted_class ? `Predicted class: ${body.predicted_class} (${body.votes} of the ${body.verified_count} verified neighbours)`
        : `No predicted class (${verified})`);
    $("results").replaceChildren(...(await Promise.all(body.neighbours.map(neighbourCard))));
  } else if (files.length === 2) {
    say(`${classes ? "Same class" : "Similar"}: ${body.same ? "YES" : "NO"}`);
    $("details").replaceChildren(table([], [
      ["distance", `${fmt(body.distance)} (threshold ${fmt(body.distance_threshold)})`],
      ["pair-head p", fmt(body.head_probability)],
      [`decision (${body.decision})`, `${fmt(body.score)} vs ${fmt(body.threshold)}${classes ? "" : " (threshold estimated)"}`],
    ]));
  } else {
    const pairs = body.matching_pairs.map((p) => `${p[0] + 1}–${p[1] + 1}`).join(", ");
    const question = classes ? "At least two share a class" : "At least two are similar";
    say(body.any_match ? `${question}: YES (${pairs})` : `${question}: NO`);
    $("details").replaceChildren(table(["pair", "distance", "pair-head p", "match"], body.pairs.map((p) =>
      [`${p.pair[0] + 1}–${p.pair[1] + 1}`, fmt(p.distance), fmt(p.head_probability), p.match ? "yes" : "no"])));
  }
}

$("files").addEventListener("change", (e) => { forgetImages(); setFiles(e.target.files); });
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { forgetImages(); setFiles(e.dataTransfer.files); });
$("clear").addEventListener("click", () => {
  files = [];
  $("files").value = "";
  forgetImages();
  show();
  say("");
  $("details").replaceChildren();
  $("results").replaceChildren();
});
$("go").addEventListener("click", () => ask().catch((e) => say(String(e), true)));
