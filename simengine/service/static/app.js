// The web app: one page, a view per hash route (#/gallery, #/item/ID, #/search, #/map, #/duplicates,
// #/calibration), so that links, Back and bookmarks work as people expect.
import { $, forgetBlobs, say, tray } from "/static/common.js";
import * as calibration from "/static/calibration.js";
import * as duplicates from "/static/duplicates.js";
import * as gallery from "/static/gallery.js";
import * as item from "/static/item.js";
import * as map from "/static/map.js";
import * as search from "/static/search.js";

const VIEWS = { gallery, item, search, map, duplicates, calibration };
let leave = null;

export function parseRoute(hash) {
  const [path, query = ""] = hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  return { name: VIEWS[name] ? name : "gallery", arg: rest.join("/"), params: new URLSearchParams(query) };
}

async function show() {
  if (leave) leave();
  leave = null;
  forgetBlobs();
  const route = parseRoute(location.hash);
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.dataset.view === route.name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  const view = $("view");
  view.replaceChildren();
  view.dataset.view = route.name;
  try {
    leave = (await VIEWS[route.name].render(view, route)) || null;
  } catch (e) {
    const message = document.createElement("p");
    say(message, e.message || String(e), true);
    view.append(message);
  }
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
