"""The web app's speed, measured in headless Chromium with the browser's own clock, on synthetic indexes of 10,000
and 100,000 items (clustered vectors of the model's width, 20 labels, two metadata columns, and paths to a few
hundred real JPEGs, so that thumbnails are made from real files):

- gallery: the first page interactive (navigation start to the page's ready mark, the cards in place), cold (the
  first load of a fresh server) and warm, and each next page (the click to the ready mark);
- item view: the hash change to its verified neighbours on screen, warm (each item opened a second time);
- map: the seconds and peak RSS of the projection (`curation.projection.index_map`, in a fresh process), the time to
  its first drawing in the page, and the frame time of pan and zoom (each frame's drawing, `performance.measure`,
  and the interval between animation frames while the page pans and zooms continuously).

    python benchmarks/app.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from common import RESULTS, table, write  # noqa: E402

LABELS = 20
PHOTOS = 300
# lazy thumbnails: those on screen
VISIBLE_LOADED = """() => [...document.querySelectorAll('#gallery img')]
  .filter((i) => i.getBoundingClientRect().top < innerHeight).every((i) => i.complete && i.naturalWidth > 0)"""
TARGETS = {"gallery_first_ms": 300, "gallery_next_ms": 150, "item_warm_ms": 150, "map_frame_ms": 50}


def photos(folder: Path, n: int) -> list[Path]:
    """n small real JPEGs: scikit-image's photos, jittered (tests/fixtures.py)."""
    from fixtures import PHOTOS as NAMES, jittered, photo

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    originals = [photo(name) for name in NAMES]
    paths = []
    for i in range(n):
        path = folder / f"p{i:04d}.jpg"
        jittered(originals[i % len(originals)], rng).save(path, quality=85)
        paths.append(path)
    return paths


def synthetic_index(folder: Path, n: int, files: list[Path], model_dir: Path, seed: int = 0) -> Path:
    """An index of n items with the model's width: vectors around 20 centres, one label each."""
    from simengine.index.model_link import create_index, replace_collection
    from simengine.model.bundle import load_bundle
    from simengine.store.layout import now_iso

    from simengine.store.writer import StoreWriter

    model = load_bundle(model_dir)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((LABELS, model.dim), dtype=np.float32)
    codes = rng.integers(0, LABELS, n)
    vectors = np.empty((n, model.dim), np.float32)
    for start in range(0, n, 65536):
        block = slice(start, min(n, start + 65536))
        vectors[block] = centres[codes[block]] + 1.2 * rng.standard_normal((block.stop - start, model.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    added = now_iso()
    rows = [{"path": str(files[i % len(files)]), "label": f"label{codes[i]:02d}", "split": None,
             "sha256": f"{i:064x}", "width": 160, "height": 160, "added_at": added,
             "camera": ("x100", "pixel", "eos")[i % 3], "iso": int(100 * 2 ** (i % 5))} for i in range(n)]
    create_index(folder, model)
    with StoreWriter(folder) as writer:
        replace_collection(writer, vectors, rows, model, model.calibration.to_dict(), "auto", {})
        writer.commit("build")
    return folder


def projection_cost(index: Path) -> dict:
    """Seconds and peak RSS of the map's projection in a fresh process (its own peak)."""
    out = subprocess.run([sys.executable, __file__, "--child-map", str(index)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_map(index: str) -> None:
    from simengine.curation.projection import index_map

    started = time.perf_counter()
    found = index_map(index)
    print(json.dumps({"items": len(found.ids), "method": found.method, "seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> int:
    """This process's own peak (VmHWM): ru_maxrss carries the parent's peak across fork and exec on Linux."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


READY = """() => new Promise((resolve, reject) => {
  const view = document.querySelector('#view');
  const t0 = performance.now();
  const done = () => resolve(performance.now() - t0);
  new MutationObserver((_, obs) => { if (view.dataset.ready === '1') { obs.disconnect(); done(); } })
    .observe(view, { attributes: true, attributeFilter: ['data-ready'] });
  setTimeout(() => reject(new Error('the view was not ready within 60 s')), 60000);
  window.__act();
})"""


def timed(page, action_js: str) -> float:
    """Milliseconds from an action (JS run in the page) to the view's next ready mark, by the page's clock."""
    page.evaluate(f"() => {{ window.__act = () => {{ {action_js} }}; }}")
    return page.evaluate(READY)


def browser_timings(url: str, n: int, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    from servers import browser, wait_until

    out: dict = {}
    with sync_playwright() as p:
        chromium = browser(p)
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        first = []
        for r in range(repeats + 1):  # the first load of a fresh server is the cold one
            page.goto("about:blank")
            page.goto(f"{url}/#/gallery")
            page.wait_for_selector("#view[data-ready='1']", timeout=60_000)
            first.append(float(page.locator("#view").get_attribute("data-ready-ms")))
        out["gallery_first_cold_ms"] = round(first[0], 1)
        out["gallery_first_ms"] = round(statistics.median(first[1:]), 1)
        wait_until(page, VISIBLE_LOADED, 60)
        out["gallery_thumbnails_ms"] = round(page.evaluate(
            "() => Math.max(...performance.getEntriesByType('resource').filter((e) => e.name.includes('/thumbnail'))"
            ".map((e) => e.responseEnd))"), 1)  # the last thumbnail's arrival, by the page's clock
        nexts = [timed(page, "document.querySelector('#next').click();") for _ in range(repeats)]
        out["gallery_next_ms"] = round(statistics.median(nexts), 1)
        ids = np.random.default_rng(1).choice(n, repeats, replace=False).tolist()
        item_ms = []
        for warm in (False, True):
            for item in ids:
                if page.evaluate("() => location.hash") == f"#/item/{item}":  # the same hash would change nothing
                    timed(page, "location.hash = '#/search';")
                ms = timed(page, f"location.hash = '#/item/{item}';")
                page.wait_for_selector("#neighbours .card-link", timeout=60_000)
                if warm:
                    item_ms.append(ms)
        out["item_warm_ms"] = round(statistics.median(item_ms), 1)
        started = time.perf_counter()
        page.goto(f"{url}/#/map")
        wait_until(page, "() => Number(document.querySelector('#map')?.dataset.frames) > 0", 600)
        out["map_first_draw_s"] = round(time.perf_counter() - started, 2)
        out["map_points"] = int(page.locator("#map").get_attribute("data-points"))
        frames = page.evaluate("""async () => {
            performance.clearMeasures('map-frame');
            const c = document.querySelector('#map'), r = c.getBoundingClientRect();
            const at = { clientX: r.left + r.width / 2, clientY: r.top + r.height / 2, bubbles: true, pointerId: 1 };
            const gaps = []; let last = performance.now();
            const frame = () => new Promise((ok) => requestAnimationFrame(() => { const t = performance.now(); gaps.push(t - last); last = t; ok(); }));
            for (let i = 0; i < 60; i++) {  // zoom in and out around the centre
              c.dispatchEvent(new WheelEvent('wheel', { ...at, deltaY: i < 30 ? -60 : 60, cancelable: true }));
              await frame();
            }
            c.dispatchEvent(new PointerEvent('pointerdown', at));
            for (let i = 0; i < 60; i++) {  // then pan
              c.dispatchEvent(new PointerEvent('pointermove', { ...at, clientX: at.clientX + 4 * i, clientY: at.clientY + 2 * i }));
              await frame();
            }
            c.dispatchEvent(new PointerEvent('pointerup', at));
            return { draw: performance.getEntriesByName('map-frame').map((e) => e.duration), gaps: gaps.slice(1) };
        }""")
        draw, gaps = np.array(frames["draw"]), np.array(frames["gaps"])
        out.update(map_frames=len(draw), map_frame_ms=round(float(np.median(draw)), 2),
                   map_frame_p95_ms=round(float(np.percentile(draw, 95)), 2),
                   map_interval_ms=round(float(np.median(gaps)), 2),
                   map_interval_p95_ms=round(float(np.percentile(gaps, 95)), 2))
        chromium.close()
    return out


def measure(n: int, work: Path, files: list[Path], model_dir: Path, repeats: int) -> dict:
    from servers import running_server

    index = synthetic_index(work / f"index-{n}", n, files, model_dir)
    result = {"items": n, "projection": projection_cost(index)}
    with running_server(index) as url:
        result["browser"] = browser_timings(url, n, repeats)
    shutil.rmtree(index)
    return result


def markdown(r: dict) -> str:
    rows = []
    for m in r["sizes"]:
        b, p = m["browser"], m["projection"]
        rows.append([m["items"], b["gallery_first_cold_ms"], b["gallery_first_ms"], b["gallery_next_ms"],
                     b["gallery_thumbnails_ms"], b["item_warm_ms"], b["map_frame_ms"], b["map_frame_p95_ms"],
                     b["map_interval_ms"], p["seconds"], p["peak_rss_mb"], b["map_first_draw_s"]])
    lines = ["# The web app in headless Chromium", "",
             "Synthetic indexes (vectors of the built-in model's width around 20 labels, two metadata columns, paths "
             f"to {r['photos']} real JPEGs); medians of {r['repeats']} runs, by the browser's clock (`performance.now`).",
             "", table(["items", "gallery first page, cold (ms)", "gallery first page, warm (ms)", "next page (ms)",
                        "first page's visible thumbnails loaded (ms)", "item + verified neighbours, warm (ms)",
                        "map frame: drawing (ms)", "map frame p95 (ms)", "map frame interval (ms)",
                        "projection (s)", "projection peak RSS (MB)", "map: navigation to first drawing (s)"], rows),
             "", "Targets: gallery first page ≤ 300 ms on 100,000 items, next page ≤ 150 ms, item view ≤ 150 ms warm, "
             "map pan/zoom frame ≤ 50 ms.", ""]
    for m in r["sizes"]:
        b = m["browser"]
        met = {k: b[k] <= v for k, v in TARGETS.items()}
        lines.append(f"- {m['items']} items: " + ", ".join(f"{k} {b[k]} ms ({'met' if ok else 'NOT met'})"
                                                            for k, ok in met.items()))
    lines += ["", "The map frame's drawing is the page's own work per frame (the points written into one ImageData "
              "and put on the canvas); the interval is the time between animation frames while the page zooms and "
              "pans continuously, which headless Chromium paces at its own frame rate. The projection runs once per "
              "index version (then it is read from the index directory); its method: "
              + "; ".join(f"{m['items']}: {m['projection']['method']}" for m in r["sizes"]) + "."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="builtin", help="the model bundle whose width and calibration the indexes take")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="app")
    parser.add_argument("--child-map", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_map:
        child_map(args.child_map)
        return {}
    from simengine.model.builtin import resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = photos(work / "photos", PHOTOS)
        sizes = [measure(n, work, files, model_dir, args.repeats) for n in args.sizes]
    result = {"sizes": sizes, "photos": PHOTOS, "repeats": args.repeats, "targets_ms": TARGETS}
    write(args.name, result, markdown(result), args.out)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
