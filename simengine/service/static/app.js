// The web app: one page, a view per hash route (#/gallery, #/item/ID, #/search, #/map, #/duplicates,
// #/calibration), so that links, Back and bookmarks work as people expect.
import { $, el, forgetBlobs, say, tray } from "/static/common.js";
import * as calibration from "/static/calibration.js";
import * as duplicates from "/static/duplicates.js";
import * as gallery from "/static/gallery.js";
import * as item from "/static/item.js";
import * as map from "/static/map.js";
import * as search from "/static/search.js";

const VIEWS = { gallery, item, search, map, duplicates, calibration };
let leave = null;
let shown = 0; // which show() is the latest: a view still loading when another is chosen must not land

export function parseRoute(hash) {
  const [path, query = ""] = hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  return { name: VIEWS[name] ? name : "gallery", arg: rest.join("/"), params: new URLSearchParams(query) };
}

async function show() {
  if (leave) leave();
  leave = null;
  forgetBlobs();
  const generation = ++shown;
  const route = parseRoute(location.hash);
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.dataset.view === route.name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  const view = $("view");
  // Each view renders into a box of its own: one left before it finished fills a detached box, seen by nobody,
  // and a view that polls stops once its box is no longer in the page.
  const box = el("div", { className: "view-box" });
  view.replaceChildren(box);
  view.dataset.view = route.name;
  let cleanup = null;
  try {
    cleanup = (await VIEWS[route.name].render(box, route)) || null;
  } catch (e) {
    const message = document.createElement("p");
    say(message, e.message || String(e), true);
    box.append(message);
  }
  if (generation !== shown) {
    if (cleanup) cleanup();
    return;
  }
  leave = cleanup;
  view.dataset.readyMs = performance.now().toFixed(1); // by the page's clock, for the benchmark
  view.dataset.ready = "1"; // tests and the benchmark wait for this
}

$("key-save").addEventListener("click", () => {
  sessionStorage.setItem("simengine-key", $("key").value);
  show();
});
$("tray-compare").addEventListener("click", () => tray.compare());
$("tray-clear").addEventListener("click", () => tray.clear());
window.addEventListener("hashchange", () => { $("view").dataset.ready = ""; show(); });
show();
