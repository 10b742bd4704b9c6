"""The web app: its API (gallery pages, columns, thumbnails, the map, the thresholds' evidence, the duplicate review)
against a real server on loopback, and each view in headless Chromium. Screenshots of every view go to
test-artifacts/ (or $SIMENGINE_TEST_ARTIFACTS), never into the repository."""

import contextlib
import itertools
import json
import os
import shutil
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fixtures import copies_folder, unlabelled_photos
from servers import browser, needs_chromium, running_server, wait_until

ARTIFACTS = Path(os.environ.get("SIMENGINE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
VIEWS = ("gallery", "item/0", "search", "map", "duplicates", "calibration")
SLOW = 120_000  # ms: a loaded CI machine


@pytest.fixture(scope="module")
def server(built_index, tmp_path_factory):
    """A server over a copy of the fixture index: the map it computes is written into the index directory."""
    index = tmp_path_factory.mktemp("webapp") / "default"
    shutil.copytree(built_index, index)
    with running_server(index) as url:
        yield url


def test_gallery_pages_filters_and_columns(server):
    columns = httpx.get(f"{server}/v1/columns").json()
    by_name = {c["name"]: c for c in columns["columns"]}
    assert columns["labelled"] and dict(map(tuple, by_name["label"]["values"])) == {
        "astronaut": 8, "chelsea": 8, "coffee": 8, "rocket": 8}
    assert by_name["width"]["kind"] == "number" and "sha256" not in by_name
    page = httpx.get(f"{server}/v1/items", params={"limit": 5, "offset": 30}).json()
    assert page["total"] == 32 and [i["id"] for i in page["items"]] == [30, 31]
    coffee = {"column": "label", "op": "eq", "value": "coffee"}
    chosen = httpx.get(f"{server}/v1/items", params={"filters": json.dumps([coffee]), "sort": "path",
                                                     "descending": "true"}).json()
    assert chosen["total"] == 8 and {i["label"] for i in chosen["items"]} == {"coffee"}
    assert [i["path"] for i in chosen["items"]] == sorted((i["path"] for i in chosen["items"]), reverse=True)
    selected = httpx.post(f"{server}/v1/items/page", json={"filters": [{"column": "id", "op": "in",
                                                                        "value": list(range(0, 32, 4))}]}).json()
    assert [i["id"] for i in selected["items"]] == list(range(0, 32, 4))
    for bad in ["not json", json.dumps([{"column": "label; DROP TABLE items", "op": "eq", "value": 1}]),
                json.dumps([{"column": "label", "op": "glob", "value": "*"}])]:
        refused = httpx.get(f"{server}/v1/items", params={"filters": bad})
        assert refused.status_code == 400 and "\n" not in refused.json()["error"]["message"]
    assert httpx.get(f"{server}/v1/items", params={"sort": "nope"}).status_code == 400
    assert httpx.get(f"{server}/v1/columns").json()["items"] == 32  # nothing was dropped


def test_thumbnails_are_small_jpegs_kept_by_the_browser(server):
    small = httpx.get(f"{server}/v1/items/3/thumbnail", params={"size": 128})
    assert small.status_code == 200 and small.headers["content-type"] == "image/jpeg"
    assert max(Image.open(BytesIO(small.content)).size) <= 128 and "max-age" in small.headers["cache-control"]
    assert httpx.get(f"{server}/v1/items/3/thumbnail", params={"size": 4000}).status_code == 400
    assert httpx.get(f"{server}/v1/items/999/thumbnail").status_code == 404


def test_a_field_an_endpoint_does_not_read_is_refused_not_ignored(server):
    ignored = httpx.post(f"{server}/v1/search", data={"id": "1", "where": "label = 'coffee'"})
    assert ignored.status_code == 400 and "'where'" in ignored.json()["error"]["message"]
    assert httpx.post(f"{server}/v1/search", data={"id": "1"}).status_code == 200


def test_the_map_and_its_colours_cover_every_item(server):
    deadline, found = 20, None
    for _ in range(deadline):  # 503 with Retry-After while the first map is computed
        answer = httpx.get(f"{server}/v1/map", timeout=60)
        if answer.status_code == 200:
            found = answer.json()
            break
        assert answer.status_code == 503 and answer.headers["retry-after"]
    assert found is not None and found["items"] == 32 and sorted(found["ids"]) == list(range(32))
    assert all(0 <= v <= 1 for v in found["x"] + found["y"]) and found["method"].startswith("t-SNE")
    colours = httpx.get(f"{server}/v1/map/colours", params={"column": "label"}).json()
    assert colours["ids"] == sorted(found["ids"]) and colours["names"] == ["astronaut", "chelsea", "coffee", "rocket"]
    assert httpx.get(f"{server}/v1/map/colours", params={"column": "nope"}).status_code == 400


def test_the_thresholds_evidence(server):
    curves = httpx.get(f"{server}/v1/calibration", timeout=60).json()
    assert not curves["estimated"] and curves["pairs"] == sum(curves["same"]) + sum(curves["different"])
    assert len(curves["edges"]) == len(curves["same"]) + 1 and 0.5 < curves["auc"] <= 1
    assert curves["roc"]["fpr"][0] == 0 and curves["roc"]["tpr"][-1] == 1
    assert curves["edges"][0] <= curves["threshold"] <= curves["edges"][-1]


def test_moves_are_refused_by_a_server_not_started_to_allow_them(server):
    refused = httpx.post(f"{server}/v1/dedup/move", json={"keepers": {"0": 1}})
    assert refused.status_code == 403 and "--move-duplicates-to" in refused.json()["error"]["message"]
    assert httpx.get(f"{server}/v1/dedup").json() == {"state": "idle", "moves_allowed": False}
    assert httpx.post(f"{server}/v1/dedup", params={"copies": "some"}).status_code == 400
    other_site = httpx.post(f"{server}/v1/dedup", headers={"Sec-Fetch-Site": "cross-site"})  # a form elsewhere
    assert other_site.status_code == 403 and httpx.get(f"{server}/v1/dedup").json()["state"] == "idle"


@contextlib.contextmanager
def watched_page():
    """A Chromium page, closed after; none of its console errors, failed scripts or CSP violations may happen."""
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        chromium = browser(p)
        page = chromium.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page


def open_view(page, url: str, view: str, timeout: float = SLOW):
    page.goto(f"{url}/#/{view}")
    page.wait_for_selector("#view[data-ready='1']", timeout=timeout)


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@needs_chromium
def test_every_view_loads_without_a_console_error_or_csp_violation(server):
    with watched_page() as page:
        for view in VIEWS:
            open_view(page, server, view)
            assert page.locator("#view p.err").count() == 0, (view, page.locator("#view").inner_text())
            page.wait_for_load_state("networkidle")
            shoot(page, f"view-{view.replace('/', '-')}")


@needs_chromium
def test_gallery_to_item_to_neighbour_and_back_with_filters_and_the_keyboard(server):
    from playwright.sync_api import expect

    with watched_page() as page:
        open_view(page, server, "gallery")
        expect(page.locator("#gallery-status")).to_have_text("items 1–32 of 32")
        expect(page.locator("#gallery .card")).to_have_count(32)
        page.select_option("select[name=label]", label="coffee (8)")
        expect(page.locator("#gallery-status")).to_have_text("items 1–8 of 8")
        expect(page.locator("#gallery .card strong")).to_have_text(["coffee"] * 8)
        page.select_option("select[name=order]", "desc")
        expect(page.locator("#gallery .card-link").first).to_have_attribute("data-id", "23")
        page.locator("#gallery .card-link").first.focus()
        page.keyboard.press("Enter")  # a card is a link: the keyboard follows it
        expect(page.locator("#item-title")).to_contain_text("(id 23)")
        expect(page.locator("#neighbours .card-link")).to_have_count(12, timeout=30_000)
        expect(page.locator("#neighbour-answer")).to_contain_text("neighbours verified")
        first = page.locator("#neighbours .card-link").first
        neighbour = first.get_attribute("data-id")
        assert neighbour != "23" and "coffee" in first.inner_text()
        first.click()
        expect(page.locator("#item-title")).to_contain_text(f"(id {neighbour})")
        page.go_back()
        expect(page.locator("#item-title")).to_contain_text("(id 23)")
        page.go_back()
        expect(page.locator("#gallery-status")).to_have_text("items 1–8 of 8")  # the filters came back too
        page.click("#gallery .card-link[data-id='23'] .pick")
        page.click("#gallery .card-link[data-id='22'] .pick")
        page.click("#tray-compare")
        expect(page.locator("#tray-answer")).to_have_text("Same class: YES", timeout=30_000)


@needs_chromium
def test_the_map_draws_every_point_and_a_box_selection_opens_in_the_gallery(server):
    from playwright.sync_api import expect

    with watched_page() as page:
        open_view(page, server, "map")
        canvas = page.locator("#map")
        expect(canvas).to_have_attribute("data-points", "32")
        wait_until(page, "() => Number(document.querySelector('#map').dataset.frames) > 0")
        coloured = page.evaluate("""() => { const c = document.querySelector('#map');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const seen = {};
            for (let i = 0; i < d.length; i += 4) {
              const key = `${d[i]},${d[i + 1]},${d[i + 2]}`;
              if (key !== '255,255,255') seen[key] = (seen[key] || 0) + 1;
            }
            return seen; }""")
        # the four labels' colours (the palette's first four), each covering at least one 2 x 2 point
        for rgb in ("31,119,180", "255,127,14", "44,160,44", "214,39,40"):
            assert coloured.get(rgb, 0) >= 4, coloured
        expect(page.locator("#legend")).to_contain_text("coffee")
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -200)  # zoom in, then out again
        page.mouse.wheel(0, 400)
        page.keyboard.down("Shift")
        page.mouse.move(box["x"] + 1, box["y"] + 1)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] - 1, box["y"] + box["height"] - 1, steps=5)
        page.mouse.up()
        page.keyboard.up("Shift")
        expect(canvas).to_have_attribute("data-selected", "32")
        shoot(page, "map-selected")
        page.click("#open-selection")
        expect(page.locator("#selection")).to_contain_text("32 items selected on the map")
        expect(page.locator("#gallery-status")).to_have_text("items 1–32 of 32")


@needs_chromium
def test_more_than_three_uploads_are_refused_before_anything_is_sent(server, val):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        chromium = browser(p)
        page = chromium.new_page()
        asked = []
        page.on("request", lambda r: asked.append(r.url) if r.method == "POST" else None)
        open_view(page, server, "search")
        page.set_input_files("#files", [str(path) for name in ("coffee", "rocket") for path in val[name][:2]])
        expect(page.locator("#answer")).to_contain_text("4 files chosen")
        expect(page.locator("#chosen .chosen")).to_have_count(4)  # each is still shown
        expect(page.locator("#go")).to_be_disabled()
        chromium.close()
    assert asked == []


@needs_chromium
def test_the_thresholds_of_an_unlabelled_index_are_shown_as_estimated(model, fixture_data, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from simengine.index.build import build_index
    from simengine.index.update import calibrate_with_examples

    build_index(unlabelled_photos(fixture_data, tmp_path / "photos", 4), model, tmp_path / "unlabelled")
    with running_server(tmp_path / "unlabelled") as url, sync_playwright() as p:
        chromium = browser(p)
        page = chromium.new_page()
        open_view(page, url, "calibration")
        expect(page.locator("#estimated")).to_contain_text("Estimated")
        expect(page.locator("#histogram")).to_have_count(0)
        open_view(page, url, "gallery")
        expect(page.locator("#gallery .card")).to_have_count(8)
        expect(page.locator("body")).not_to_contain_text("class")
        # A few labelled pairs calibrate it: the view says so, with the threshold's interval, and no longer
        # calls the thresholds estimated (the served index moves to the new version on its next request).
        photos = sorted((tmp_path / "photos").glob("*.jpg"))
        with open(tmp_path / "photos" / "pairs.csv", "w") as f:
            f.write("img1,img2,label\n" + "".join(
                f"{a.name},{b.name},{int(a.stem.rsplit('_', 1)[0] == b.stem.rsplit('_', 1)[0])}\n"
                for a, b in itertools.combinations(photos, 2)))
        calibrate_with_examples(tmp_path / "unlabelled", pairs=tmp_path / "photos" / "pairs.csv")
        open_view(page, url, "calibration")
        expect(page.locator("main")).to_contain_text("labelled pairs from pairs.csv")
        expect(page.locator("main")).to_contain_text("95 % interval of the pair threshold")
        expect(page.locator("#estimated")).to_have_count(0)
        chromium.close()


@needs_chromium
def test_a_duplicate_review_moves_the_copies_a_person_confirms(builtin_model, tmp_path):
    from playwright.sync_api import expect

    from simengine.index.build import build_index

    folder = copies_folder(tmp_path / "photos")
    build_index(folder, builtin_model, tmp_path / "index", labels="none")
    with running_server(tmp_path / "index", "--move-duplicates-to", str(tmp_path / "aside")) as url, \
            watched_page() as page:
        open_view(page, url, "duplicates")
        expect(page.locator("#dedup-status")).to_contain_text("No search has run")
        page.click("#find-duplicates")
        expect(page.locator("#dedup-status")).to_contain_text("groups", timeout=SLOW)
        groups = page.locator("#groups section.group")
        expect(groups).to_have_count(2)
        coffee = groups.filter(has_text="coffee.jpg")
        expect(coffee.locator(".card")).to_have_count(3)
        expect(coffee.locator(".card").first).to_contain_text("keeper")  # the keeper first
        expect(coffee.locator(".card").nth(1)).to_contain_text("near copy: backbone")  # why it matched
        shoot(page, "duplicates-review")
        coffee.locator("input[type=radio]").nth(2).check()  # keep another copy than the one proposed
        kept = coffee.locator(".card-link").nth(2).get_attribute("title")
        coffee.locator("input[type=checkbox]").check()
        page.click("#move")
        expect(page.locator("#move-result")).to_contain_text("Moved 2 files aside", timeout=30_000)
        assert Path(kept).is_file() and len(list((tmp_path / "aside").rglob("*.jpg"))) == 2
        assert (folder / "rocket-tilted.jpg").is_file()  # the group not checked stays
        assert httpx.get(f"{url}/healthz").json()["items"] == 4


@needs_chromium
def test_hostile_names_and_labels_stay_text_in_every_view(index_copy, val, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from simengine.index.update import add_images

    evil = "<img src=x onerror=alert(document.domain)>"
    named = tmp_path / f"{evil}.jpg"
    shutil.copy(val["rocket"][0], named)
    [item_id] = add_images(index_copy, [named], label=evil).added
    with running_server(index_copy) as url, sync_playwright() as p:
        chromium = browser(p)
        page = chromium.new_page()
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        open_view(page, url, "gallery")
        expect(page.locator("#gallery")).to_contain_text(evil)
        expect(page.locator("select[name=label]")).to_contain_text(evil)
        open_view(page, url, f"item/{item_id}")
        expect(page.locator("#item-title")).to_contain_text(evil)
        open_view(page, url, "map")
        expect(page.locator("#legend")).to_contain_text(evil)
        open_view(page, url, "calibration")
        page.wait_for_timeout(300)
        assert page.locator("img[src='x']").count() == 0
        chromium.close()
    assert dialogs == []
