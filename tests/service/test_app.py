"""The HTTP service, against a real server process on loopback, and its web page in headless Chromium."""

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from simengine.service.app import EngineWorker, is_loopback

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(index: Path, *args: str):
    """`simengine serve` on a free loopback port, stopped on exit."""
    port = free_port()
    exe = Path(sys.executable).with_name("simengine")
    proc = subprocess.Popen([str(exe), "serve", "--index", str(index), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {proc.stdout.read()}")
                time.sleep(0.3)
        else:
            pytest.fail("server did not start in 90 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(built_index):
    with running_server(built_index, "--max-upload-mb", "0.1") as url:
        yield url


def upload(*paths, field="images"):
    return [(field, (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in paths]


def test_health_info_and_items(server, built_index):
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok", "items": 32, "version": 1}
    info = httpx.get(f"{server}/v1/info").json()
    assert info["items"] == 32 and info["backbone"] == "tf_efficientnet_lite0"
    item = httpx.get(f"{server}/v1/items/3").json()
    assert item["id"] == 3
    image = httpx.get(f"{server}/v1/items/3/image")
    assert image.status_code == 200 and image.content == Path(item["path"]).read_bytes()


def test_images_over_the_pixel_limit_are_refused(server, val, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (7000, 7000)).save(huge, optimize=True)  # 6 kB, under the upload limit
    response = httpx.post(f"{server}/v1/pair", files=upload(huge, val["coffee"][0]))
    assert response.status_code == 422
    assert response.json()["error"]["message"].endswith("image too large to decode safely (7000x7000 px, more than 40,000,000)")


def test_ids_beyond_int64_are_not_found(server):
    for item_id in ("99999999999999999999999", "9223372036854775807"):
        response = httpx.get(f"{server}/v1/items/{item_id}")
        assert response.status_code == 404 and response.json()["error"]["message"] == f"no item with id {item_id}"
    response = httpx.post(f"{server}/v1/search", data={"id": "99999999999999999999999"})
    assert response.status_code == 404, response.text


def test_pair_triplet_search_match_the_cli_json(server, val):
    pair = httpx.post(f"{server}/v1/pair", files=upload(val["coffee"][0], val["coffee"][1])).json()
    assert pair["same"] is True and pair["a"] == f"upload:{val['coffee'][0].name}"
    assert set(pair) == {"a", "b", "same", "distance", "distance_threshold", "head_probability", "score", "threshold", "decision"}
    trip = httpx.post(f"{server}/v1/triplet", files=upload(val["rocket"][0], val["coffee"][1]), data={"ids": ["0"]}).json()
    assert trip["images"][2] == "id:0" and set(trip) == {"images", "any_match", "matching_pairs", "pairs", "threshold", "decision"}
    found = httpx.post(f"{server}/v1/search?k=3", files=upload(val["chelsea"][0], field="image")).json()
    assert len(found["neighbours"]) == 3 and found["predicted_class"] == "chelsea"
    by_id = httpx.post(f"{server}/v1/search?k=1", data={"id": "5"}).json()
    assert by_id["neighbours"][0]["id"] == 5 and by_id["neighbours"][0]["distance"] == pytest.approx(0, abs=1e-5)


def error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and "Traceback" not in response.text
    return body["error"]["message"]


def test_error_cases(server, val, tmp_path):
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(noise)
    assert "larger than" in error(httpx.post(f"{server}/v1/pair", files=upload(noise, val["coffee"][0])), 413)
    text = [("images", ("notes.jpg", b"hello, not an image", "image/jpeg")), *upload(val["coffee"][0])]
    assert "not a supported image" in error(httpx.post(f"{server}/v1/pair", files=text), 415)
    html = [("images", ("x.html", b"<html></html>", "text/html")), *upload(val["coffee"][0])]
    assert "not an image" in error(httpx.post(f"{server}/v1/pair", files=html), 415)
    broken = [("images", ("bad.jpg", val["coffee"][0].read_bytes()[:400], "image/jpeg")), *upload(val["coffee"][0])]
    assert "bad.jpg" in error(httpx.post(f"{server}/v1/pair", files=broken), 422)
    error(httpx.get(f"{server}/v1/items/999"), 404)
    error(httpx.post(f"{server}/v1/pair", files=upload(val["coffee"][0]), data={"ids": ["999"]}), 404)
    assert "exactly 2" in error(httpx.post(f"{server}/v1/pair", files=upload(*val["coffee"][:3])), 400)
    assert "exactly 3" in error(httpx.post(f"{server}/v1/triplet", files=upload(*val["coffee"], val["rocket"][0])), 400)
    error(httpx.post(f"{server}/v1/search?k=0", data={"id": "1"}), 422)
    for attempt in ("/v1/items/..%2F..%2Fetc%2Fpasswd/image", "/v1/items/%2Fetc%2Fpasswd/image", "/../../etc/passwd"):
        response = httpx.get(f"{server}{attempt}")
        assert response.status_code in (404, 422) and "root:" not in response.text


def test_concurrent_requests(server, val):
    results = []

    def one():
        results.append(httpx.post(f"{server}/v1/pair", files=upload(val["coffee"][0], val["rocket"][0]), timeout=60).status_code)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * 6


def test_openapi_schema_and_its_examples(server, val):
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/pair", "/v1/triplet", "/v1/search", "/v1/items/{item_id}", "/v1/items/{item_id}/image", "/v1/info"} <= set(schema["paths"])
    example = schema["paths"]["/v1/pair"]["post"]["responses"]["200"]["content"]["application/json"]["example"]
    real = httpx.post(f"{server}/v1/pair", files=upload(val["coffee"][0], val["coffee"][1])).json()
    assert set(example) == set(real) and {k: type(v) for k, v in example.items()} == {k: type(v) for k, v in real.items()}
    search_example = schema["paths"]["/v1/search"]["post"]["responses"]["200"]["content"]["application/json"]["example"]
    real = httpx.post(f"{server}/v1/search?k=1", data={"id": "1"}).json()
    assert set(search_example) == set(real) and set(search_example["neighbours"][0]) == set(real["neighbours"][0])


def test_worker_answers_503_when_full_and_504_when_slow():
    from fastapi import HTTPException

    async def scenario():
        worker = EngineWorker(lambda: None, max_pending=1, timeout_s=0.3)
        slow = asyncio.ensure_future(worker.call(time.sleep, 0.2))
        await asyncio.sleep(0.05)
        with pytest.raises(HTTPException) as busy:
            await worker.call(time.sleep, 0)
        await slow
        with pytest.raises(HTTPException) as late:
            await worker.call(time.sleep, 0.6)
        return busy.value.status_code, late.value.status_code

    assert asyncio.run(scenario()) == (503, 504)


def test_binding_defaults_to_loopback():
    from simengine.errors import SimengineError
    from simengine.service.app import serve

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(SimengineError, match="--allow-remote"):
        serve(None, host="0.0.0.0")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_web_page_in_headless_chromium(server, val):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone-sized screen
        page.goto(server)
        page.set_input_files("#files", str(val["astronaut"][0]))
        page.fill("#k", "4")
        page.focus("#go")
        page.keyboard.press("Enter")  # keyboard alone
        expect(page.locator("#results figure")).to_have_count(4, timeout=30_000)
        expect(page.locator("#answer")).to_contain_text("astronaut")
        page.click("#clear")
        page.set_input_files("#files", [str(val["coffee"][0]), str(val["coffee"][1])])
        page.click("#go")
        expect(page.locator("#answer")).to_have_text("Same class: YES", timeout=30_000)
        page.set_input_files("#files", [str(val["coffee"][0]), str(val["rocket"][1]), str(val["coffee"][2])])
        page.click("#go")
        expect(page.locator("#answer")).to_contain_text("YES (1–3)", timeout=30_000)
        browser.close()


def test_a_running_server_sees_adds_and_removes(index_copy, val):
    from simengine.index.update import add_images, remove_items

    def within(seconds: float, check) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.1)
        return False

    with running_server(index_copy) as url:
        assert httpx.get(f"{url}/v1/items/32").status_code == 404
        added = add_images(index_copy, val["rocket"][:1]).added
        assert added == [32]
        assert within(2, lambda: httpx.get(f"{url}/v1/items/32").status_code == 200)
        found = httpx.post(f"{url}/v1/search", params={"k": 1}, files=upload(val["rocket"][0], field="image")).json()
        assert found["neighbours"][0]["id"] == 32
        remove_items(index_copy, ["32"])
        assert within(2, lambda: httpx.get(f"{url}/v1/items/32").status_code == 404)
        found = httpx.post(f"{url}/v1/search", params={"k": 3}, files=upload(val["rocket"][0], field="image")).json()
        assert 32 not in [n["id"] for n in found["neighbours"]]
        assert httpx.get(f"{url}/v1/info").json()["version"] == 3
